//! Image file names a peer may send: plain names, nothing that leaves the image directory.

/// The longest name accepted (CRIU's image names are short: `pages-12.img`, `core-1.img`).
pub const MAX_NAME: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("empty image file name")]
    Empty,
    /// Too long.
    #[error("image file name of {0} bytes is longer than {MAX_NAME}")]
    TooLong(usize),
    /// A path separator, `.`/`..`, a NUL, or a control character.
    #[error("image file name {0:?} is not a plain file name")]
    NotPlain(String),
}

/// Accepts `name` when it is a plain file name: no `/`, not `.` or `..`, no NUL or control
/// characters, at most [`MAX_NAME`] bytes.
pub fn validate(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(NameError::NotPlain(name.to_string()));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[rstest::rstest]
    #[case("pages-1.img")]
    #[case("core-42.img")]
    #[case("stats-dump")]
    fn accepts_criu_names(#[case] n: &str) {
        assert_eq!(validate(n), Ok(n));
    }

    #[rstest::rstest]
    #[case("")]
    #[case(".")]
    #[case("..")]
    #[case("../etc/passwd")]
    #[case("/etc/passwd")]
    #[case("a/b")]
    #[case("a\0b")]
    #[case("a\nb")]
    fn refuses_paths(#[case] n: &str) {
        assert!(validate(n).is_err(), "{n:?} must be refused");
    }

    proptest! {
        #[test]
        fn accepted_names_stay_in_the_directory(n in "\\PC{0,200}") {
            if let Ok(ok) = validate(&n) {
                let p = std::path::Path::new("/img").join(ok);
                prop_assert_eq!(p.parent(), Some(std::path::Path::new("/img")));
                prop_assert!(ok != ".." && ok != ".");
            }
        }
    }
}
