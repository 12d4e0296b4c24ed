//! Validation of user input, shared by every operation so each rule exists once.

use super::error::{ControlError, ControlResult};

/// Longest session or track name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Fader range (linear).
pub const LEVEL_RANGE: (f64, f64) = (0.0, 2.0);
/// Pre-record trim range (linear; 4.0 is +12 dB).
pub const INPUT_GAIN_RANGE: (f64, f64) = (0.0, 4.0);
/// Pan range.
pub const PAN_RANGE: (f64, f64) = (-1.0, 1.0);

/// A session or track name: 1–128 characters after trimming, no control characters.
pub fn name(what: &str, value: &str) -> ControlResult<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ControlError::invalid_argument(format!(
            "{what} name must not be empty"
        )));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(ControlError::invalid_argument(format!(
            "{what} name is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ControlError::invalid_argument(format!(
            "{what} name must not contain control characters"
        )));
    }
    Ok(trimmed.to_string())
}

/// A finite number inside `range` (inclusive).
pub fn number(what: &str, value: f64, range: (f64, f64)) -> ControlResult<f64> {
    if !value.is_finite() {
        return Err(ControlError::invalid_argument(format!(
            "{what} must be a finite number, got {value}"
        )));
    }
    if value < range.0 || value > range.1 {
        return Err(ControlError::invalid_argument(format!(
            "{what} must be between {} and {}, got {value}",
            range.0, range.1
        )));
    }
    Ok(value)
}

/// Checks an input word's form (the audio graph checks that what it names exists): no control
/// characters, at most 256 characters.
pub fn input(value: &str) -> ControlResult<()> {
    if value.chars().any(char::is_control) || value.chars().count() > 256 {
        return Err(ControlError::invalid_argument(
            "input is not a valid port or device name",
        ));
    }
    Ok(())
}

/// A file-name-safe form of a track name: lowercase ASCII letters, digits and dashes.
pub fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.chars().take(40).collect();
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "track".into()
    } else {
        slug.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("track", "  Bass DI ").unwrap(), "Bass DI");
        assert!(name("track", "").is_err());
        assert!(name("track", "   ").is_err());
        assert!(name("track", &"x".repeat(10_000)).is_err());
        assert!(name("track", "a\u{7}b").is_err());
        assert!(name("track", &"é".repeat(MAX_NAME_CHARS)).is_ok());
    }

    #[test]
    fn numbers_must_be_finite_and_in_range() {
        assert!(number("level", f64::NAN, LEVEL_RANGE).is_err());
        assert!(number("level", f64::INFINITY, LEVEL_RANGE).is_err());
        assert!(number("level", -0.1, LEVEL_RANGE).is_err());
        assert!(number("level", 2.01, LEVEL_RANGE).is_err());
        assert_eq!(number("level", 2.0, LEVEL_RANGE).unwrap(), 2.0);
        assert_eq!(number("pan", -1.0, PAN_RANGE).unwrap(), -1.0);
    }

    #[test]
    fn slugs_are_file_safe() {
        assert_eq!(slug("Lead Vocal (take 2)"), "lead-vocal-take-2");
        assert_eq!(slug("***"), "track");
        assert_eq!(slug(&format!("{} tail", "a".repeat(39))), "a".repeat(39));
        assert_eq!(slug("Ünïcode"), "n-code");
    }
}
