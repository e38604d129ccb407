//! The rules of a batch's names (`systemName`, `videos[].id`, `videos[].fileName`), in one
//! place for the API, which enforces them, and the importer, which checks a manifest against
//! them before sending anything.

/// Longest `systemName`, in bytes (UTF-8).
pub const MAX_SYSTEM_NAME: usize = 200;
/// Longest `videos[].id`, in bytes (UTF-8).
pub const MAX_ID: usize = 1024;
/// Longest `videos[].fileName`, in bytes (UTF-8).
pub const MAX_FILE_NAME: usize = 1024;

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    /// Nothing but white space.
    Empty,
    /// Longer than allowed: limits count bytes, so that they bound storage whatever the
    /// script (200 bytes are 200 Latin letters or about 66 CJK characters).
    TooLong { bytes: usize, max: usize },
    /// A control character (a line break, a tab, an escape): it would end up in file names,
    /// `Content-Disposition` headers and log lines.
    Control(char),
}

impl std::fmt::Display for NameProblem {
    /// As the API says it, after the field's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameProblem::Empty => write!(f, "must not be empty"),
            NameProblem::TooLong { bytes, max } => write!(
                f,
                "is {bytes} bytes long (UTF-8); at most {max} bytes are allowed: shorten it"
            ),
            NameProblem::Control(c) => write!(
                f,
                "contains the control character U+{:04X} ({}); remove it",
                *c as u32,
                c.escape_default()
            ),
        }
    }
}

/// Checks a name of at most `max` bytes: not empty, not too long, no control character.
pub fn check_name(value: &str, max: usize) -> Result<(), NameProblem> {
    if value.trim().is_empty() {
        return Err(NameProblem::Empty);
    }
    if value.len() > max {
        return Err(NameProblem::TooLong {
            bytes: value.len(),
            max,
        });
    }
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(NameProblem::Control(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_for_emptiness_length_in_bytes_and_control_characters() {
        assert_eq!(check_name("archive", MAX_SYSTEM_NAME), Ok(()));
        assert_eq!(check_name(" \t", 10), Err(NameProblem::Empty));
        // Limits count bytes: three-byte characters fill 200 bytes with 66 of them.
        assert_eq!(check_name(&"日".repeat(66), MAX_SYSTEM_NAME), Ok(()));
        assert_eq!(
            check_name(&"日".repeat(67), MAX_SYSTEM_NAME),
            Err(NameProblem::TooLong {
                bytes: 201,
                max: 200
            })
        );
        assert_eq!(
            check_name("clip\n1", MAX_ID),
            Err(NameProblem::Control('\n'))
        );
        assert_eq!(
            check_name("a\u{1b}[31m", MAX_FILE_NAME),
            Err(NameProblem::Control('\u{1b}'))
        );
        assert_eq!(
            NameProblem::Control('\t').to_string(),
            "contains the control character U+0009 (\\t); remove it"
        );
        assert_eq!(
            NameProblem::TooLong {
                bytes: 1025,
                max: 1024
            }
            .to_string(),
            "is 1025 bytes long (UTF-8); at most 1024 bytes are allowed: shorten it"
        );
    }
}
