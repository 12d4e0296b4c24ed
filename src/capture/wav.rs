//! [`WavWriter`]: a crash-safe WAV take file.
//!
//! The file is a canonical 44-byte-header WAV (`RIFF`, a 16-byte `fmt ` chunk, `data`). Samples
//! are buffered in memory and appended; [`WavWriter::sync`] writes the buffer, rewrites the
//! RIFF and data sizes in place and `fdatasync`s, so after any crash the file on disk is a valid
//! WAV holding at least every frame written before the last sync. Whatever was appended after
//! it is recovered by [`repair_wav`](super::repair_wav).
//!
//! Nothing here is real-time safe: every call may block on the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::SampleFormat;

/// Length of the canonical header; the data chunk starts here.
pub(crate) const HEADER_LEN: u64 = 44;

/// Byte offset of the RIFF chunk size (36 + data bytes).
const RIFF_SIZE_OFFSET: u64 = 4;

/// Byte offset of the data chunk size.
const DATA_SIZE_OFFSET: u64 = 40;

/// The RIFF size field is a `u32` counting everything after the first 8 bytes: 36 header bytes
/// plus the data. Takes stop before it would overflow (there is no RF64 support).
const MAX_RIFF_DATA_BYTES: u64 = u32::MAX as u64 - (HEADER_LEN - 8);

/// Encoded bytes buffered before they are appended to the file.
const BUFFER_BYTES: usize = 64 * 1024;

/// Shape of a take file, as written in (and parsed back from) its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WavShape {
    /// Interleaved channels per frame.
    pub channels: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Encoding of each sample.
    pub format: SampleFormat,
}

impl WavShape {
    /// Bytes per frame, or an `InvalidInput` error when the shape cannot be written as a WAV
    /// (no channels, zero rate, or a frame or byte rate that overflows the header fields).
    fn validate(self) -> io::Result<u16> {
        let block_align = u32::from(self.channels) * u32::from(self.format.bytes_per_sample());
        let byte_rate = u64::from(block_align) * u64::from(self.sample_rate);
        if self.channels == 0 || self.sample_rate == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a WAV take needs at least one channel and a non-zero sample rate",
            ));
        }
        match (u16::try_from(block_align), u32::try_from(byte_rate)) {
            (Ok(block_align), Ok(_)) => Ok(block_align),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many channels or too high a sample rate for a WAV header",
            )),
        }
    }

    /// Bytes per frame; only called on a validated shape.
    pub(crate) fn block_align(self) -> u16 {
        self.channels * self.format.bytes_per_sample()
    }

    /// The largest data chunk a take of this shape may hold: whole frames under the 4 GiB
    /// RIFF limit.
    pub(crate) fn max_data_bytes(self) -> u64 {
        let block_align = u64::from(self.block_align());
        MAX_RIFF_DATA_BYTES / block_align * block_align
    }

    /// The 44-byte header for `data_bytes` bytes of audio.
    fn header(self, data_bytes: u64) -> [u8; HEADER_LEN as usize] {
        let block_align = self.block_align();
        let byte_rate = u32::from(block_align) * self.sample_rate;
        let mut header = [0u8; HEADER_LEN as usize];
        header[0..4].copy_from_slice(b"RIFF");
        header[4..8].copy_from_slice(&riff_size(data_bytes).to_le_bytes());
        header[8..12].copy_from_slice(b"WAVE");
        header[12..16].copy_from_slice(b"fmt ");
        header[16..20].copy_from_slice(&16u32.to_le_bytes());
        header[20..22].copy_from_slice(&self.format.format_tag().to_le_bytes());
        header[22..24].copy_from_slice(&self.channels.to_le_bytes());
        header[24..28].copy_from_slice(&self.sample_rate.to_le_bytes());
        header[28..32].copy_from_slice(&byte_rate.to_le_bytes());
        header[32..34].copy_from_slice(&block_align.to_le_bytes());
        header[34..36].copy_from_slice(&self.format.bits_per_sample().to_le_bytes());
        header[36..40].copy_from_slice(b"data");
        header[40..44].copy_from_slice(&data_size(data_bytes).to_le_bytes());
        header
    }

    /// Parses a header this module wrote: canonical layout, PCM 16/24-bit or float 32-bit,
    /// consistent block align and byte rate. `None` for anything else.
    pub(crate) fn parse(header: &[u8; HEADER_LEN as usize]) -> Option<WavShape> {
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if &header[0..4] != b"RIFF"
            || &header[8..12] != b"WAVE"
            || &header[12..16] != b"fmt "
            || u32_at(16) != 16
            || &header[36..40] != b"data"
        {
            return None;
        }
        let format = match (u16_at(20), u16_at(34)) {
            (1, 16) => SampleFormat::S16,
            (1, 24) => SampleFormat::S24,
            (3, 32) => SampleFormat::F32,
            _ => return None,
        };
        let shape = WavShape {
            channels: u16_at(22),
            sample_rate: u32_at(24),
            format,
        };
        let block_align = shape.validate().ok()?;
        let consistent = u16_at(32) == block_align
            && u64::from(u32_at(28)) == u64::from(block_align) * u64::from(shape.sample_rate);
        consistent.then_some(shape)
    }
}

/// RIFF chunk size for `data_bytes` of audio (always fits: data is capped by the caller).
fn riff_size(data_bytes: u64) -> u32 {
    u32::try_from(data_bytes + (HEADER_LEN - 8)).unwrap_or(u32::MAX)
}

/// Data chunk size field for `data_bytes` of audio.
fn data_size(data_bytes: u64) -> u32 {
    u32::try_from(data_bytes).unwrap_or(u32::MAX)
}

/// Rewrites the two size fields of the header in place (`pwrite`: the append position of the
/// file is untouched).
pub(crate) fn write_sizes(file: &File, data_bytes: u64) -> io::Result<()> {
    file.write_all_at(&riff_size(data_bytes).to_le_bytes(), RIFF_SIZE_OFFSET)?;
    file.write_all_at(&data_size(data_bytes).to_le_bytes(), DATA_SIZE_OFFSET)
}

/// Makes a new directory entry durable: `fsync` on the parent directory of `path`.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Samples converted per pass of [`encode`]: the integer conversion runs over a whole block so
/// the compiler turns it into vector instructions.
const ENCODE_BLOCK: usize = 64;

/// `samples` scaled by `full_scale`, clamped to ±`full_scale` and rounded half away from zero
/// (as `f32::round`, which is a library call on baseline x86-64); NaN becomes 0. Written into
/// the front of `out`.
fn quantize(samples: &[f32], full_scale: f32, out: &mut [i32; ENCODE_BLOCK]) {
    for (value, &sample) in out.iter_mut().zip(samples) {
        let scaled = sample * full_scale;
        let scaled = if scaled.is_nan() { 0.0 } else { scaled }.clamp(-full_scale, full_scale);
        let rounded = scaled + 0.5f32.copysign(scaled);
        // SAFETY: `rounded` is finite and within ±(full_scale + 0.5), and `full_scale` is at
        // most 8 388 607, so the value fits an i32 (the precondition of `to_int_unchecked`).
        // The checked `as` conversion would keep this loop from being vectorised.
        *value = unsafe { rounded.to_int_unchecked::<i32>() };
    }
}

/// Appends samples in `format` to `out`: integers are clamped to [−1, 1], scaled by
/// 32767 / 8388607 and rounded to nearest (half away from zero); floats are written as they
/// are. NaN becomes 0. This runs for every recorded sample, so each format has one resize and
/// straight loops.
fn encode(format: SampleFormat, samples: &[f32], out: &mut Vec<u8>) {
    let width = usize::from(format.bytes_per_sample());
    let start = out.len();
    out.resize(start + samples.len() * width, 0);
    let target = &mut out[start..];
    let mut ints = [0i32; ENCODE_BLOCK];
    match format {
        SampleFormat::S16 => {
            for (block, bytes) in samples
                .chunks(ENCODE_BLOCK)
                .zip(target.chunks_mut(ENCODE_BLOCK * 2))
            {
                quantize(block, 32_767.0, &mut ints);
                for (pair, &value) in bytes.chunks_exact_mut(2).zip(&ints) {
                    pair.copy_from_slice(&(value as i16).to_le_bytes());
                }
            }
        }
        SampleFormat::S24 => {
            for (block, bytes) in samples
                .chunks(ENCODE_BLOCK)
                .zip(target.chunks_mut(ENCODE_BLOCK * 3))
            {
                quantize(block, 8_388_607.0, &mut ints);
                pack_s24(&ints[..block.len()], bytes);
            }
        }
        SampleFormat::F32 => {
            for (bytes, &sample) in target.chunks_exact_mut(4).zip(samples) {
                let sample = if sample.is_nan() { 0.0 } else { sample };
                bytes.copy_from_slice(&sample.to_le_bytes());
            }
        }
    }
}

/// Writes the low three bytes of each value, little-endian, into `bytes` (3 per value): four
/// values at a time as three 32-bit words, the rest one by one.
fn pack_s24(values: &[i32], bytes: &mut [u8]) {
    let mut quads = values.chunks_exact(4);
    let mut words = bytes.chunks_exact_mut(12);
    for (quad, out) in (&mut quads).zip(&mut words) {
        let [a, b, c, d] = [quad[0], quad[1], quad[2], quad[3]].map(|v| v as u32);
        let first = (a & 0x00FF_FFFF) | (b << 24);
        let second = ((b >> 8) & 0xFFFF) | (c << 16);
        let third = ((c >> 16) & 0xFF) | (d << 8);
        out[0..4].copy_from_slice(&first.to_le_bytes());
        out[4..8].copy_from_slice(&second.to_le_bytes());
        out[8..12].copy_from_slice(&third.to_le_bytes());
    }
    for (out, value) in words
        .into_remainder()
        .chunks_exact_mut(3)
        .zip(quads.remainder())
    {
        out.copy_from_slice(&value.to_le_bytes()[0..3]);
    }
}

/// A crash-safe WAV file being written (one take). **Not** real-time safe: it writes to disk.
///
/// Writes are buffered; [`sync`](WavWriter::sync) makes the file valid and durable as it stands.
/// On any I/O error (e.g. `ENOSPC`) the writer truncates the file to the last whole frame that
/// reached the disk, rewrites the header and `fdatasync`s, so the file stays playable; from then
/// on [`frames`](WavWriter::frames) counts exactly what the file holds and every further write
/// fails. Dropping a writer without [`finish`](WavWriter::finish) syncs it on a best-effort basis.
#[derive(Debug)]
pub struct WavWriter {
    file: File,
    shape: WavShape,
    /// Bytes per frame.
    block_align: u64,
    /// Whole frames accepted: on disk plus buffered.
    frames: u64,
    /// Data bytes appended to the file (the buffer excluded).
    written_bytes: u64,
    /// Data bytes the header on disk declares (as of the last successful stage or sync).
    header_bytes: u64,
    /// The filesystem the file is on (`st_dev`), so one sync can cover every take on it.
    device: u64,
    /// Encoded samples not yet appended.
    buffer: Vec<u8>,
    /// Size limit of the data chunk (whole frames).
    max_data_bytes: u64,
    /// Set after an I/O error: the file was made valid and is closed for writing.
    failed: bool,
    /// Set by `finish`, so `Drop` does nothing more.
    finished: bool,
}

impl WavWriter {
    /// Creates the file (it must not exist: a take is never overwritten), writes the header
    /// for an empty take and makes the file and its directory entry durable. On failure no
    /// file is left behind. **Not** real-time safe.
    pub fn create(
        path: &Path,
        channels: u16,
        sample_rate: u32,
        format: SampleFormat,
    ) -> io::Result<Self> {
        let shape = WavShape {
            channels,
            sample_rate,
            format,
        };
        let block_align = shape.validate()?;
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let durable = file
            .write_all(&shape.header(0))
            .and_then(|()| file.sync_data())
            .and_then(|()| sync_parent(path));
        if let Err(error) = durable {
            drop(file);
            // Best effort: a header-less file is not a take; the create error is what matters.
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
        let device = file.metadata()?.dev();
        Ok(WavWriter {
            file,
            shape,
            block_align: u64::from(block_align),
            frames: 0,
            written_bytes: 0,
            header_bytes: 0,
            device,
            buffer: Vec::with_capacity(BUFFER_BYTES + 4 * usize::from(channels)),
            max_data_bytes: shape.max_data_bytes(),
            failed: false,
            finished: false,
        })
    }

    /// Appends interleaved frames (`channels` samples each). Fails with `InvalidInput` (nothing
    /// written) when the length is not a whole number of frames. When the take would grow past
    /// the 4 GiB WAV limit, the frames that fit are written, the file is synced, and the call
    /// fails with `FileTooLarge`. **Not** real-time safe.
    pub fn write_frames(&mut self, interleaved: &[f32]) -> io::Result<()> {
        self.check_open()?;
        let channels = usize::from(self.shape.channels);
        if interleaved.len() % channels != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write_frames needs a whole number of interleaved frames",
            ));
        }
        let wanted = (interleaved.len() / channels) as u64;
        let accepted = wanted.min(self.room_frames());
        let frames_per_chunk = (BUFFER_BYTES / self.block_align as usize).max(1);
        let samples = &interleaved[..accepted as usize * channels];
        for chunk in samples.chunks(frames_per_chunk * channels) {
            encode(self.shape.format, chunk, &mut self.buffer);
            self.frames += (chunk.len() / channels) as u64;
            self.flush_if_full()?;
        }
        if accepted < wanted {
            return Err(self.end_at_size_limit());
        }
        Ok(())
    }

    /// Appends `frames` frames of digital silence (used for frames the processor lost, so
    /// positions stay aligned). Same size-limit behaviour as [`write_frames`](Self::write_frames).
    /// **Not** real-time safe.
    pub fn write_silence(&mut self, frames: u64) -> io::Result<()> {
        self.check_open()?;
        let accepted = frames.min(self.room_frames());
        let frames_per_chunk = (BUFFER_BYTES as u64 / self.block_align).max(1);
        let mut left = accepted;
        while left > 0 {
            let chunk = left.min(frames_per_chunk);
            let bytes = (chunk * self.block_align) as usize;
            self.buffer.resize(self.buffer.len() + bytes, 0);
            self.frames += chunk;
            left -= chunk;
            self.flush_if_full()?;
        }
        if accepted < frames {
            return Err(self.end_at_size_limit());
        }
        Ok(())
    }

    /// Frames accepted so far (after an error: frames the file holds). Real-time safe, but
    /// only ever called on the writer thread.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Audio bytes accepted so far (`frames × channels × bytes per sample`).
    pub fn data_bytes(&self) -> u64 {
        self.frames * self.block_align
    }

    /// Makes the file valid and durable as it stands: appends the buffer, rewrites the RIFF and
    /// data sizes, `fdatasync`s. On error the file is cut back to its last whole frame and kept
    /// valid (see the type's docs). **Not** real-time safe: blocks on the disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.stage()?;
        self.file.sync_data().inspect_err(|_| self.recover())
    }

    /// The first half of [`sync`](Self::sync), for a caller that then syncs the whole
    /// filesystem once for many files ([`sync_filesystem`](Self::sync_filesystem)): appends the
    /// buffer and rewrites the RIFF and data sizes, without waiting for the disk. Same error
    /// behaviour as `sync`. **Not** real-time safe.
    pub fn stage(&mut self) -> io::Result<()> {
        self.check_open()?;
        let result = self
            .append_buffer()
            .and_then(|()| write_sizes(&self.file, self.written_bytes));
        match result {
            Ok(()) => {
                self.header_bytes = self.written_bytes;
                Ok(())
            }
            Err(error) => {
                self.recover();
                Err(error)
            }
        }
    }

    /// Syncs the filesystem the file is on (`syncfs`): every file on it, this one's staged
    /// data and header included, is durable when it returns. One call serves every take on the
    /// filesystem, instead of an `fdatasync` (and a journal commit) per take. **Not**
    /// real-time safe: blocks on the disk.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        // SAFETY: `syncfs` only reads the descriptor, which `self.file` keeps open.
        if unsafe { libc::syncfs(self.file.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The filesystem the file is on (`st_dev`).
    pub fn device(&self) -> u64 {
        self.device
    }

    /// Syncs and closes the file; returns the number of frames it holds. **Not** real-time
    /// safe.
    pub fn finish(mut self) -> io::Result<u64> {
        self.sync()?;
        self.finished = true;
        Ok(self.frames)
    }

    /// Frames that still fit under the size limit.
    fn room_frames(&self) -> u64 {
        self.max_data_bytes.saturating_sub(self.data_bytes()) / self.block_align
    }

    /// Fails when the writer was finished or already hit an I/O error.
    fn check_open(&self) -> io::Result<()> {
        if self.failed || self.finished {
            return Err(io::Error::other(
                "the take file is closed after an earlier error",
            ));
        }
        Ok(())
    }

    /// Appends the buffer when it is full; on error makes the file valid and fails.
    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buffer.len() < BUFFER_BYTES {
            return Ok(());
        }
        self.append_buffer().inspect_err(|_| self.recover())
    }

    /// Appends the buffered bytes to the file.
    fn append_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buffer)?;
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// The take reached the WAV size limit: syncs what fits and closes the writer.
    fn end_at_size_limit(&mut self) -> io::Error {
        if let Err(error) = self.sync() {
            return error;
        }
        self.failed = true;
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "the take reached the 4 GiB WAV size limit after {} frames (RF64 is not supported)",
                self.frames
            ),
        )
    }

    /// After an I/O error: drops the buffer, truncates the file to its last whole frame on
    /// disk, rewrites the header and syncs (each step best effort), and closes the writer.
    /// `frames` then counts what a reader of the file will find.
    fn recover(&mut self) {
        self.failed = true;
        self.buffer.clear();
        let on_disk = match self.file.metadata() {
            Ok(metadata) => metadata.len().saturating_sub(HEADER_LEN),
            Err(_) => self.written_bytes,
        };
        let data = (on_disk / self.block_align * self.block_align).min(self.max_data_bytes);
        let truncated = self.file.set_len(HEADER_LEN + data).is_ok();
        let valid_bytes = if truncated && write_sizes(&self.file, data).is_ok() {
            data
        } else {
            // The header still declares the last staged size, which the file covers.
            self.header_bytes.min(data)
        };
        // Best effort: nothing more can be done if the disk refuses even this.
        let _ = self.file.sync_data();
        self.written_bytes = valid_bytes;
        self.header_bytes = valid_bytes;
        self.frames = valid_bytes / self.block_align;
    }

    /// Lowers the size limit so tests can reach it without writing 4 GiB.
    #[cfg(test)]
    pub(crate) fn set_max_data_bytes(&mut self, bytes: u64) {
        self.max_data_bytes = bytes / self.block_align * self.block_align;
    }
}

impl Drop for WavWriter {
    /// Best-effort sync of a writer that was neither finished nor failed (e.g. the writer
    /// thread unwinding), so the file on disk holds everything accepted.
    fn drop(&mut self) {
        if !self.finished && !self.failed {
            let _ = self.sync();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// A deterministic test signal that covers the whole range, including clipping.
    pub(crate) fn signal(frames: usize, channels: usize) -> Vec<f32> {
        (0..frames * channels)
            .map(|i| ((i as f32 * 0.013).sin() * 1.2).clamp(-1.3, 1.3))
            .collect()
    }

    /// Expected integer value of `sample` at `bits` (16 or 24).
    fn expected_int(sample: f32, bits: u32) -> i32 {
        let scale = ((1i64 << (bits - 1)) - 1) as f32;
        (sample.clamp(-1.0, 1.0) * scale).round() as i32
    }

    /// Asserts that hound reads back `samples` from `path` within one LSB.
    pub(crate) fn assert_reads_back(path: &Path, format: SampleFormat, samples: &[f32]) {
        let mut reader = hound::WavReader::open(path).expect("hound opens the take");
        assert_eq!(reader.len() as usize, samples.len());
        match format {
            SampleFormat::F32 => {
                let read: Vec<f32> = reader.samples::<f32>().map(|s| s.unwrap()).collect();
                assert_eq!(read, samples);
            }
            SampleFormat::S16 | SampleFormat::S24 => {
                let bits = u32::from(format.bits_per_sample());
                for (i, (read, &sample)) in reader.samples::<i32>().zip(samples).enumerate() {
                    let read = read.unwrap();
                    let want = expected_int(sample, bits);
                    assert!((read - want).abs() <= 1, "sample {i}: {read} vs {want}");
                }
            }
        }
    }

    /// `sox --i -X` for one field of the file's info.
    fn sox_info(path: &Path, flag: &str) -> String {
        let out = Command::new("sox")
            .args(["--i", flag])
            .arg(path)
            .output()
            .expect("sox must be installed for this test");
        assert!(out.status.success(), "sox --i {flag} failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn round_trip_every_format_through_hound_and_sox() {
        let dir = tempfile::tempdir().unwrap();
        for format in [SampleFormat::S16, SampleFormat::S24, SampleFormat::F32] {
            for channels in [1u16, 2] {
                let path = dir
                    .path()
                    .join(format!("{}-{channels}.wav", format.as_str()));
                let frames = 30_001;
                let samples = signal(frames, usize::from(channels));
                let mut wav = WavWriter::create(&path, channels, 44_100, format).unwrap();
                wav.write_frames(&samples[..1000 * usize::from(channels)])
                    .unwrap();
                wav.write_frames(&samples[1000 * usize::from(channels)..])
                    .unwrap();
                assert_eq!(wav.frames(), frames as u64);
                assert_eq!(
                    wav.data_bytes(),
                    frames as u64 * u64::from(channels * format.bytes_per_sample())
                );
                assert_eq!(wav.finish().unwrap(), frames as u64);

                assert_reads_back(&path, format, &samples);
                let spec = hound::WavReader::open(&path).unwrap().spec();
                assert_eq!(spec.channels, channels);
                assert_eq!(spec.sample_rate, 44_100);
                assert_eq!(spec.bits_per_sample, format.bits_per_sample());
                assert_eq!(sox_info(&path, "-r"), "44100");
                assert_eq!(sox_info(&path, "-c"), channels.to_string());
                assert_eq!(sox_info(&path, "-b"), format.bits_per_sample().to_string());
                assert_eq!(sox_info(&path, "-s"), frames.to_string());
                let size = std::fs::metadata(&path).unwrap().len();
                assert_eq!(
                    size,
                    HEADER_LEN + frames as u64 * u64::from(channels * format.bytes_per_sample())
                );
            }
        }
    }

    #[test]
    fn conversion_clamps_scales_and_rounds() {
        let mut out = Vec::new();
        encode(SampleFormat::S16, &[1.5f32, -1.5, 0.5, f32::NAN], &mut out);
        let read: Vec<i16> = out
            .chunks(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(read, [32_767, -32_767, 16_384, 0]);
        out.clear();
        encode(SampleFormat::S24, &[-1.0], &mut out);
        encode(SampleFormat::S24, &[0.25], &mut out);
        assert_eq!(out, [0x01, 0x00, 0x80, 0x00, 0x00, 0x20]);
        out.clear();
        encode(SampleFormat::F32, &[0.5, f32::NAN], &mut out);
        assert_eq!(out, [0, 0, 0, 0x3f, 0, 0, 0, 0]);
    }

    /// The block encoder against a per-sample reference, over lengths that end inside a block
    /// and inside a group of four, with values that clip, round both ways and are not numbers.
    #[test]
    fn block_encoding_matches_per_sample_conversion() {
        fn reference(sample: f32, full_scale: f32) -> i32 {
            let x = if sample.is_nan() { 0.0 } else { sample };
            (x.clamp(-1.0, 1.0) * full_scale).round() as i32
        }
        let samples: Vec<f32> = (0..203)
            .map(|i| match i % 17 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => -3.0,
                3 => 0.5 / 32_767.0,
                4 => -1.5 / 8_388_607.0,
                _ => (i as f32 * 0.37).sin() * 1.1,
            })
            .collect();
        for len in [0, 1, 3, 4, 5, 63, 64, 65, 130, 203] {
            let input = &samples[..len];
            let mut out = Vec::new();
            encode(SampleFormat::S24, input, &mut out);
            let read: Vec<i32> = out
                .chunks(3)
                .map(|b| i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8)
                .collect();
            let expected: Vec<i32> = input.iter().map(|&s| reference(s, 8_388_607.0)).collect();
            assert_eq!(read, expected, "s24, {len} samples");
            out.clear();
            encode(SampleFormat::S16, input, &mut out);
            let read: Vec<i32> = out
                .chunks(2)
                .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
                .collect();
            let expected: Vec<i32> = input.iter().map(|&s| reference(s, 32_767.0)).collect();
            assert_eq!(read, expected, "s16, {len} samples");
        }
    }

    #[test]
    fn silence_is_written_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gap.wav");
        let mut wav = WavWriter::create(&path, 2, 48_000, SampleFormat::S24).unwrap();
        let before = vec![0.5f32; 20];
        wav.write_frames(&before).unwrap();
        wav.write_silence(50_000).unwrap();
        wav.write_frames(&before).unwrap();
        assert_eq!(wav.finish().unwrap(), 50_020);
        let mut expected = before.clone();
        expected.extend(std::iter::repeat_n(0.0, 100_000));
        expected.extend(&before);
        assert_reads_back(&path, SampleFormat::S24, &expected);
    }

    #[test]
    fn create_refuses_bad_shapes_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let zero = WavWriter::create(&path, 0, 48_000, SampleFormat::S16).unwrap_err();
        assert_eq!(zero.kind(), io::ErrorKind::InvalidInput);
        assert!(!path.exists());
        std::fs::write(&path, b"precious").unwrap();
        let exists = WavWriter::create(&path, 1, 48_000, SampleFormat::S16).unwrap_err();
        assert_eq!(exists.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn partial_frames_are_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let mut wav = WavWriter::create(&path, 2, 48_000, SampleFormat::F32).unwrap();
        let error = wav.write_frames(&[0.1, 0.2, 0.3]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        wav.write_frames(&[0.1, 0.2]).unwrap();
        assert_eq!(wav.finish().unwrap(), 1);
        assert_reads_back(&path, SampleFormat::F32, &[0.1, 0.2]);
    }

    #[test]
    fn size_limit_ends_the_take_with_a_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let mut wav = WavWriter::create(&path, 2, 48_000, SampleFormat::S16).unwrap();
        wav.set_max_data_bytes(4 * 1000 + 3);
        let samples = signal(800, 2);
        wav.write_frames(&samples).unwrap();
        let error = wav.write_frames(&samples).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge);
        assert!(error.to_string().contains("4 GiB"), "{error}");
        assert_eq!(wav.frames(), 1000);
        assert!(wav.write_silence(1).is_err());
        drop(wav);
        let mut expected = samples.clone();
        expected.extend_from_slice(&samples[..400]);
        assert_reads_back(&path, SampleFormat::S16, &expected);
    }
}
