//! What the graphs with ports per track (JACK, PipeWire) share: the input-word grammar and the
//! port names. Not real-time code.

use super::BackendError;

/// Splits an input word into one group of source port names per channel: `none` (or empty),
/// or one group per channel separated by `,`, each one or more ports separated by `+`
/// (`system:capture_1,system:capture_2`; `a:out+b:out`).
pub(super) fn parse_input(input: &str, channels: u8) -> Result<Vec<Vec<String>>, BackendError> {
    let input = input.trim();
    if input.is_empty() || input == "none" {
        return Ok(vec![Vec::new(); usize::from(channels)]);
    }
    let groups: Vec<Vec<String>> = input
        .split(',')
        .map(|group| {
            group
                .split('+')
                .map(str::trim)
                .filter(|p| !p.is_empty() && *p != "none")
                .map(str::to_string)
                .collect()
        })
        .collect();
    if groups.len() != usize::from(channels) {
        return Err(BackendError::input(format!(
            "a {} track takes {} input group(s) separated by ',', got {}: {input:?}",
            if channels == 2 { "stereo" } else { "mono" },
            channels,
            groups.len()
        )));
    }
    Ok(groups)
}

/// Short port names of a track: `<session>.<base>.in`, or `.in_L` and `.in_R` for stereo;
/// `base` is the track part (a slug of the track's name).
pub(super) fn track_port_names(prefix: &str, base: &str, channels: u8) -> Vec<String> {
    if channels >= 2 {
        vec![
            format!("{prefix}.{base}.in_L"),
            format!("{prefix}.{base}.in_R"),
        ]
    } else {
        vec![format!("{prefix}.{base}.in")]
    }
}

/// Locks a mutex of control-side graph state; a panic elsewhere while it was held leaves the
/// state usable (every update to it is a whole assignment).
pub(super) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_words_split_into_channel_groups() {
        assert_eq!(
            parse_input("none", 2).unwrap(),
            vec![Vec::<String>::new(); 2]
        );
        assert_eq!(
            parse_input("a:1+b:2, c:3", 2).unwrap(),
            vec![
                vec!["a:1".to_string(), "b:2".into()],
                vec!["c:3".to_string()]
            ]
        );
        let error = parse_input("a:1,b:2", 1).unwrap_err();
        assert!(error.invalid_input, "{error}");
    }

    #[test]
    fn port_names_carry_session_and_track() {
        assert_eq!(
            track_port_names("demo", "track-1", 1),
            vec!["demo.track-1.in"]
        );
        assert_eq!(
            track_port_names("demo", "keys", 2),
            vec!["demo.keys.in_L", "demo.keys.in_R"]
        );
    }
}
