//! Recovery of takes interrupted by a crash or a power cut.
//!
//! A take's header is only as fresh as its last sync; the file usually holds more frames after
//! it, possibly ending in a partial frame. [`repair_wav`] keeps every whole frame on disk.
//! **Not** real-time safe: it blocks on the disk. Called at start-up for every take still
//! journaled as `recording`.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::path::Path;

use super::wav::{write_sizes, WavShape, HEADER_LEN};
use super::SampleFormat;

/// What [`repair_wav`] found in (and made of) a take file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairedWav {
    /// Whole frames the repaired file holds.
    pub frames: u64,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Sample encoding.
    pub format: SampleFormat,
}

/// Recovery after a crash or power cut: trims a partial last frame, rewrites the header sizes
/// from the file length, fdatasyncs. Errors (`InvalidData`, file untouched) on a file that is
/// not one of ours (bad header). **Not** real-time safe.
pub fn repair_wav(path: &Path) -> io::Result<RepairedWav> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header).map_err(|error| {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            not_ours(path, "shorter than a WAV header")
        } else {
            error
        }
    })?;
    let shape = WavShape::parse(&header)
        .ok_or_else(|| not_ours(path, "not a canonical 16/24-bit PCM or 32-bit float WAV"))?;
    let block_align = u64::from(shape.block_align());
    let length = file.metadata()?.len();
    let data = ((length - HEADER_LEN) / block_align * block_align).min(shape.max_data_bytes());
    if length != HEADER_LEN + data {
        file.set_len(HEADER_LEN + data)?;
    }
    write_sizes(&file, data)?;
    file.sync_data()?;
    Ok(RepairedWav {
        frames: data / block_align,
        channels: shape.channels,
        sample_rate: shape.sample_rate,
        format: shape.format,
    })
}

/// The error for a file `repair_wav` refuses to touch.
fn not_ours(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not an overdub take: {why}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::wav::tests::{assert_reads_back, signal};
    use crate::capture::WavWriter;
    use std::io::Write;

    #[test]
    fn crash_image_is_valid_to_the_sync_and_repair_keeps_every_whole_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("take.wav");
        let crashed = dir.path().join("crashed.wav");
        let format = SampleFormat::S24;
        let samples = signal(60_000, 2);
        let mut wav = WavWriter::create(&path, 2, 48_000, format).unwrap();
        wav.write_frames(&samples[..2 * 10_000]).unwrap();
        wav.sync().unwrap();
        // More than the writer's buffer, so part of it reaches the file without a header update.
        wav.write_frames(&samples[2 * 10_000..]).unwrap();
        // The "crash": the file as it is on disk now, before any further sync or finish.
        std::fs::copy(&path, &crashed).unwrap();
        drop(wav);

        // Valid as it stands: the header covers the synced frames.
        assert_reads_back(&crashed, format, &samples[..2 * 10_000]);
        let on_disk = std::fs::metadata(&crashed).unwrap().len();
        assert!(
            on_disk > HEADER_LEN + 6 * 10_000,
            "unsynced data reached the file"
        );

        // A torn last write: half a frame of garbage.
        let mut file = OpenOptions::new().append(true).open(&crashed).unwrap();
        file.write_all(&[0xAB, 0xCD, 0xEF, 0x12]).unwrap();
        drop(file);

        let repaired = repair_wav(&crashed).unwrap();
        assert_eq!(repaired.channels, 2);
        assert_eq!(repaired.sample_rate, 48_000);
        assert_eq!(repaired.format, format);
        assert_eq!(repaired.frames, (on_disk - HEADER_LEN) / 6);
        assert!(repaired.frames > 10_000);
        assert_eq!(
            std::fs::metadata(&crashed).unwrap().len(),
            HEADER_LEN + repaired.frames * 6
        );
        assert_reads_back(&crashed, format, &samples[..2 * repaired.frames as usize]);

        // Repairing a sound file changes nothing.
        assert_eq!(repair_wav(&crashed).unwrap(), repaired);
    }

    #[test]
    fn repair_refuses_files_that_are_not_takes() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.wav");
        std::fs::write(&short, b"RIFF").unwrap();
        assert_eq!(
            repair_wav(&short).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let text = dir.path().join("text.wav");
        let content = vec![b'x'; 100];
        std::fs::write(&text, &content).unwrap();
        assert_eq!(
            repair_wav(&text).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(std::fs::read(&text).unwrap(), content);
        assert!(repair_wav(&dir.path().join("missing.wav")).is_err());
    }
}
