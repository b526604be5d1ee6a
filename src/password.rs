//! New passwords, from the operating system's CSPRNG.

use rand::rngs::OsRng;
use rand::TryRngCore;
use secrecy::SecretString;

use crate::secret::Engine;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("password length must be between {MIN_LENGTH} and {MAX_LENGTH}, not {0}")]
    Length(usize),
    #[error("the excluded characters leave no printable ASCII character to choose from")]
    EmptyAlphabet,
}

const MIN_LENGTH: usize = 16;
const MAX_LENGTH: usize = 128;

/// How passwords are made. The defaults follow AWS's rotation functions: 32 printable ASCII
/// characters, at least one of each class, without the characters that break connection strings
/// or SQL quoting for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub length: usize,
    /// `None`: the engine's default exclusions.
    pub exclude: Option<String>,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            length: 32,
            exclude: None,
        }
    }
}

impl PasswordPolicy {
    /// AWS's defaults: `:/@"'\` for PostgreSQL, `/@"'\` for MySQL and MariaDB.
    pub fn default_exclusions(engine: Engine) -> &'static str {
        match engine {
            Engine::Postgres => ":/@\"'\\",
            Engine::Mysql | Engine::Mariadb => "/@\"'\\",
        }
    }

    /// Never generated, whatever `exclude` says: on MySQL the password travels in a string
    /// literal, and these are the characters whose escaping depends on the server's SQL mode.
    pub fn always_excluded(engine: Engine) -> &'static str {
        match engine {
            Engine::Postgres => "",
            Engine::Mysql | Engine::Mariadb => "\"'\\",
        }
    }

    fn alphabet(&self, engine: Engine) -> Vec<u8> {
        let exclude = self
            .exclude
            .as_deref()
            .unwrap_or(Self::default_exclusions(engine));
        let always = Self::always_excluded(engine);
        (b'!'..=b'~')
            .filter(|b| !exclude.as_bytes().contains(b) && !always.as_bytes().contains(b))
            .collect()
    }

    pub fn validate(&self, engine: Engine) -> Result<(), PolicyError> {
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&self.length) {
            return Err(PolicyError::Length(self.length));
        }
        if self.alphabet(engine).is_empty() {
            return Err(PolicyError::EmptyAlphabet);
        }
        Ok(())
    }

    pub fn generate(&self, engine: Engine) -> Result<SecretString, PolicyError> {
        self.validate(engine)?;
        let alphabet = self.alphabet(engine);
        let classes: [fn(&u8) -> bool; 4] = [
            u8::is_ascii_lowercase,
            u8::is_ascii_uppercase,
            u8::is_ascii_digit,
            u8::is_ascii_punctuation,
        ];
        // Only require the classes the alphabet still has after exclusions.
        let required: Vec<_> = classes.iter().filter(|c| alphabet.iter().any(c)).collect();
        loop {
            let candidate: Vec<u8> = (0..self.length)
                .map(|_| alphabet[uniform_index(alphabet.len())])
                .collect();
            if required.iter().all(|c| candidate.iter().any(c)) {
                let s = String::from_utf8(candidate).expect("alphabet is ASCII");
                return Ok(SecretString::from(s));
            }
        }
    }
}

/// An unbiased index below `n` (rejection sampling over the OS RNG).
fn uniform_index(n: usize) -> usize {
    let n = n as u32;
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let v = OsRng
            .try_next_u32()
            .expect("the operating system's random source failed");
        if v < zone {
            return (v % n) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn default_postgres_passwords_have_32_characters_of_every_class_and_no_excluded_ones() {
        let policy = PasswordPolicy::default();
        for _ in 0..200 {
            let p = policy.generate(Engine::Postgres).unwrap();
            let p = p.expose_secret();
            assert_eq!(p.len(), 32);
            assert!(!p.chars().any(|c| ":/@\"'\\".contains(c)), "{}", p.len());
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
            assert!(p.chars().any(|c| c.is_ascii_punctuation()));
        }
    }

    #[test]
    fn two_passwords_differ() {
        let policy = PasswordPolicy::default();
        let a = policy.generate(Engine::Postgres).unwrap();
        let b = policy.generate(Engine::Postgres).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn custom_exclusions_and_length_apply() {
        let policy = PasswordPolicy {
            length: 20,
            exclude: Some(
                (b'!'..=b'~')
                    .filter(|b| !b.is_ascii_alphanumeric())
                    .map(char::from)
                    .collect(),
            ),
        };
        let p = policy.generate(Engine::Mysql).unwrap();
        assert_eq!(p.expose_secret().len(), 20);
        assert!(p.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn impossible_policies_are_refused() {
        let short = PasswordPolicy {
            length: 4,
            exclude: None,
        };
        assert_eq!(
            short.validate(Engine::Postgres),
            Err(PolicyError::Length(4))
        );
        let all: String = (b'!'..=b'~').map(char::from).collect();
        let empty = PasswordPolicy {
            length: 32,
            exclude: Some(all),
        };
        assert_eq!(
            empty.validate(Engine::Postgres),
            Err(PolicyError::EmptyAlphabet)
        );
    }
}
