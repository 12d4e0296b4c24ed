//! The capture writer: the disk-writer thread that turns the processor's per-track rings into
//! crash-safe WAV takes, and the recovery of takes interrupted by a crash or a power cut.
//!
//! Nothing in this module runs on the real-time thread. The processor only ever touches the
//! lock-free `rtrb` rings (samples and [`CaptureMarker`](crate::engine::messages::CaptureMarker)s);
//! everything here blocks on the disk and is **not** real-time safe.
//!
//! - [`wav`]: [`WavWriter`], a WAV file whose header is rewritten on every [`WavWriter::sync`],
//!   so the file on disk is always playable up to the last sync.
//! - [`writer`]: [`CaptureWriter`], the `overdub-capture` thread.
//! - [`recovery`]: [`repair_wav`], which makes a take left behind by a crash playable again.
//! - [`space`]: [`free_space`], the free-space probe behind [`WriterToControl::DiskLow`].

pub mod recovery;
pub mod space;
pub mod wav;
pub mod writer;

pub use recovery::{repair_wav, RepairedWav};
pub use space::free_space;
pub use wav::WavWriter;
pub use writer::{CaptureWriter, ControlToWriter, SyncScope, WriterConfig, WriterToControl};

/// Sample format of a take file (config `capture.format`). 24-bit PCM is the default: it is
/// lossless for every real converter and a quarter smaller than float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SampleFormat {
    /// 16-bit signed PCM, little-endian (`"s16"`).
    S16,
    /// 24-bit signed PCM, little-endian, packed in 3 bytes (`"s24"`); the default.
    #[default]
    S24,
    /// 32-bit IEEE float (`"f32"`).
    F32,
}

impl SampleFormat {
    /// Parses the config word: `s16`, `s24` or `f32`.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "s16" => Some(SampleFormat::S16),
            "s24" => Some(SampleFormat::S24),
            "f32" => Some(SampleFormat::F32),
            _ => None,
        }
    }

    /// The config word for this format (the inverse of [`SampleFormat::parse`]).
    pub fn as_str(self) -> &'static str {
        match self {
            SampleFormat::S16 => "s16",
            SampleFormat::S24 => "s24",
            SampleFormat::F32 => "f32",
        }
    }

    /// Bytes one sample of one channel takes in the file.
    pub fn bytes_per_sample(self) -> u16 {
        match self {
            SampleFormat::S16 => 2,
            SampleFormat::S24 => 3,
            SampleFormat::F32 => 4,
        }
    }

    /// Bits per sample as written in the WAV `fmt ` chunk.
    pub(crate) fn bits_per_sample(self) -> u16 {
        self.bytes_per_sample() * 8
    }

    /// WAV format tag: 1 (PCM) for the integer formats, 3 (IEEE float) for `f32`.
    pub(crate) fn format_tag(self) -> u16 {
        match self {
            SampleFormat::S16 | SampleFormat::S24 => 1,
            SampleFormat::F32 => 3,
        }
    }
}

/// Bytes per second of audio data a take of this shape writes; used to turn free disk space
/// into seconds of recording left.
pub fn bytes_per_second(format: SampleFormat, channels: u16, sample_rate: u32) -> u64 {
    u64::from(format.bytes_per_sample()) * u64::from(channels) * u64::from(sample_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_words_round_trip() {
        for format in [SampleFormat::S16, SampleFormat::S24, SampleFormat::F32] {
            assert_eq!(SampleFormat::parse(format.as_str()), Some(format));
        }
        assert_eq!(SampleFormat::parse("s32"), None);
        assert_eq!(SampleFormat::parse("S24"), None);
        assert_eq!(SampleFormat::default(), SampleFormat::S24);
    }

    #[test]
    fn bytes_per_second_counts_every_channel() {
        assert_eq!(bytes_per_second(SampleFormat::S24, 2, 48_000), 288_000);
        assert_eq!(bytes_per_second(SampleFormat::S16, 1, 44_100), 88_200);
        assert_eq!(bytes_per_second(SampleFormat::F32, 2, 96_000), 768_000);
    }
}
