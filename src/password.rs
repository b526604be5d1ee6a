//! New passwords, from the operating system's CSPRNG.

use secrecy::SecretString;

use crate::rotation::ports::PasswordRules;
use crate::secret::Engine;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("password length must be between {MIN_LENGTH} and {MAX_LENGTH}, not {0}")]
    Length(usize),
    #[error("the excluded characters leave no printable ASCII character to choose from")]
    EmptyAlphabet,
    #[error("no password can meet the database's password rules: {0}")]
    Unmet(String),
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
        self.generate_for(engine, &PasswordRules::default())
    }

    /// A password that also meets the server's own rules (MariaDB's `simple_password_check`,
    /// MySQL's `validate_password`): longer if they ask for it, with as many characters of each
    /// class as they ask for.
    pub fn generate_for(
        &self,
        engine: Engine,
        rules: &PasswordRules,
    ) -> Result<SecretString, PolicyError> {
        self.validate(engine)?;
        let alphabet = self.alphabet(engine);
        let classes: [(Class, usize, &str); 4] = [
            (
                u8::is_ascii_lowercase,
                rules.min_lower,
                "lower-case letters",
            ),
            (
                u8::is_ascii_uppercase,
                rules.min_upper,
                "upper-case letters",
            ),
            (u8::is_ascii_digit, rules.min_digits, "digits"),
            (
                u8::is_ascii_punctuation,
                rules.min_other,
                "other characters",
            ),
        ];
        let mut picked: Vec<u8> = Vec::new();
        for (class, wanted, name) in classes {
            let members: Vec<u8> = alphabet.iter().copied().filter(class).collect();
            // At least one of each class the alphabet still has after exclusions.
            let wanted = if members.is_empty() { 0 } else { wanted.max(1) };
            if wanted > 0 && members.is_empty() {
                return Err(PolicyError::Unmet(format!(
                    "the server wants {wanted} {name}, and the excluded characters leave none"
                )));
            }
            picked.extend((0..wanted).map(|_| members[uniform_index(members.len())]));
        }
        let length = self.length.max(rules.min_length).max(picked.len());
        if length > MAX_LENGTH {
            return Err(PolicyError::Unmet(format!(
                "the server's rules need {length} characters, more than {MAX_LENGTH}"
            )));
        }
        while picked.len() < length {
            picked.push(alphabet[uniform_index(alphabet.len())]);
        }
        // Fisher-Yates: the required characters end up anywhere.
        for i in (1..picked.len()).rev() {
            picked.swap(i, uniform_index(i + 1));
        }
        let s = String::from_utf8(picked).expect("alphabet is ASCII");
        Ok(SecretString::from(s))
    }
}

/// A character class: lower-case letters, say.
type Class = fn(&u8) -> bool;

/// An unbiased index below `n` (rejection sampling over the OS RNG, `crate::entropy`).
fn uniform_index(n: usize) -> usize {
    let n = n as u32;
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let v = crate::entropy::next_u32();
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
    fn passwords_meet_the_servers_rules() {
        let rules = PasswordRules {
            min_length: 40,
            min_lower: 3,
            min_upper: 3,
            min_digits: 6,
            min_other: 4,
            source: Some("simple_password_check".into()),
        };
        for _ in 0..200 {
            let p = PasswordPolicy::default()
                .generate_for(Engine::Mariadb, &rules)
                .unwrap();
            let p = p.expose_secret();
            let count = |f: fn(&char) -> bool| p.chars().filter(f).count();
            assert_eq!(p.len(), 40);
            assert!(count(char::is_ascii_lowercase) >= 3);
            assert!(count(char::is_ascii_uppercase) >= 3);
            assert!(count(char::is_ascii_digit) >= 6);
            assert!(count(char::is_ascii_punctuation) >= 4);
            assert!(!p.chars().any(|c| "/@\"'\\".contains(c)));
        }
        let too_long = PasswordRules {
            min_length: 500,
            ..PasswordRules::default()
        };
        assert!(matches!(
            PasswordPolicy::default().generate_for(Engine::Mariadb, &too_long),
            Err(PolicyError::Unmet(_))
        ));
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
