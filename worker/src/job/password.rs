//! Revocation passwords: generated at issuance when a job brings none (shaped to the
//! product's `revocation_password_pattern`), and derived from the CN for revoking old
//! certificates issued without a stored one (the contract's rule).
//!
//! A generated password comes from a CSPRNG ([`generate`]), or, with the shared
//! `revocationPasswordSecret`, from the secret and the job id ([`derive`]), so that
//! every worker arrives at the same password for the same job: the bytes are
//! `seed = HMAC-SHA-256(secret, job_id)`, then blocks `HMAC-SHA-256(seed, i)` for
//! `i = 0, 1, ...` (4-byte big-endian); each choice among `n` takes the next 4 bytes as
//! a big-endian `u32`, skipped while at or above the largest multiple of `n` (so every
//! choice is uniform). The shapes are tried in the same order either way.

use hmac::{Hmac, Mac};
use rand::Rng;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const DIGITS: &[u8] = b"23456789";
const SYMBOLS: &[u8] = b"-_.!#%+=?@";

/// Lengths tried, most preferred first.
const LENGTHS: [usize; 9] = [24, 20, 16, 32, 12, 40, 64, 10, 8];

/// The password for a revocation without one: `Rv-` + the first 16 hex digits of
/// SHA-256 over the UTF-8 CN + `!9` (for certificates issued without a stored password;
/// backwards compatibility only).
pub fn derived_from_cn(cn: &str) -> Secret {
    let digest = Sha256::digest(cn.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Secret::new(format!("Rv-{hex}!9"))
}

/// A random password that matches `rule` (anchored to the whole value), or `None`
/// when no candidate shape fits it.
pub fn generate(rule: Option<&Regex>) -> Option<Secret> {
    shaped(&mut Random(rand::rng()), rule)
}

/// The password derived from `secret` and `job_id` (see the module documentation)
/// that matches `rule`, or `None` when no candidate shape fits it. The same on every
/// worker with the same secret.
pub fn derive(secret: &Secret, job_id: &str, rule: Option<&Regex>) -> Option<Secret> {
    shaped(&mut Derived::new(secret.expose().as_bytes(), job_id), rule)
}

/// Uniform choices: from a CSPRNG or from the derivation.
trait Choose {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize;
}

struct Random(rand::rngs::ThreadRng);

impl Choose for Random {
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

/// The byte stream of the derivation (zeroed when dropped: it is derived from the
/// secret).
struct Derived {
    seed: zeroize::Zeroizing<Vec<u8>>,
    block: zeroize::Zeroizing<[u8; 32]>,
    used: usize,
    counter: u32,
}

impl Derived {
    fn new(secret: &[u8], job_id: &str) -> Derived {
        let seed = zeroize::Zeroizing::new(hmac(secret, job_id.as_bytes()).to_vec());
        Derived {
            seed,
            block: zeroize::Zeroizing::new([0; 32]),
            used: 32,
            counter: 0,
        }
    }

    fn next_u32(&mut self) -> u32 {
        if self.used + 4 > self.block.len() {
            *self.block = hmac(&self.seed, &self.counter.to_be_bytes());
            self.counter = self.counter.wrapping_add(1);
            self.used = 0;
        }
        let bytes = [
            self.block[self.used],
            self.block[self.used + 1],
            self.block[self.used + 2],
            self.block[self.used + 3],
        ];
        self.used += 4;
        u32::from_be_bytes(bytes)
    }
}

impl Choose for Derived {
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let limit = (u64::from(u32::MAX) + 1) / n * n;
        loop {
            let value = u64::from(self.next_u32());
            if value < limit {
                return (value % n) as usize;
            }
        }
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The first candidate of the preferred shapes that matches `rule`.
fn shaped(choose: &mut impl Choose, rule: Option<&Regex>) -> Option<Secret> {
    let alphabets: [&[&[u8]]; 5] = [
        &[LOWER, UPPER, DIGITS, SYMBOLS],
        &[LOWER, UPPER, DIGITS],
        &[LOWER, DIGITS],
        &[UPPER, DIGITS],
        &[DIGITS],
    ];
    for classes in alphabets {
        for length in LENGTHS {
            for _ in 0..4 {
                let candidate = candidate(choose, classes, length);
                if rule.is_none_or(|re| re.is_match(&candidate)) {
                    return Some(Secret::new(candidate));
                }
            }
        }
    }
    None
}

/// `length` characters with at least one from each class, shuffled.
fn candidate(choose: &mut impl Choose, classes: &[&[u8]], length: usize) -> String {
    let all: Vec<u8> = classes.iter().flat_map(|c| c.iter().copied()).collect();
    let mut chars: Vec<u8> = classes
        .iter()
        .map(|class| class[choose.below(class.len())])
        .collect();
    while chars.len() < length {
        chars.push(all[choose.below(all.len())]);
    }
    // Fisher-Yates, so the guaranteed characters are not always first.
    for i in (1..chars.len()).rev() {
        chars.swap(i, choose.below(i + 1));
    }
    // The alphabets are ASCII.
    chars.into_iter().map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(p: &str) -> Regex {
        Regex::new(&format!("^(?:{p})$")).unwrap()
    }

    #[test]
    fn the_cn_rule_is_the_contracts() {
        // SHA-256("www.example.com") starts 80fc09...
        let pw = derived_from_cn("www.example.com");
        let digest = Sha256::digest(b"www.example.com");
        let expected = format!(
            "Rv-{}!9",
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        assert_eq!(pw.expose(), expected);
        assert_eq!(pw.expose().len(), 3 + 16 + 2);
    }

    #[test]
    fn generated_passwords_fit_the_products_rules() {
        for pattern in [
            "[A-Za-z0-9!#%+,.:=?@_-]{12,64}",
            "[0-9]{6,8}",
            "[a-z0-9]{16}",
            "[A-Za-z0-9]{8,}",
            ".{10,20}",
        ] {
            let re = whole(pattern);
            for _ in 0..20 {
                let pw = generate(Some(&re)).unwrap_or_else(|| panic!("nothing fits {pattern}"));
                assert!(re.is_match(pw.expose()), "{pattern}: {:?}", pw.expose());
            }
        }
        assert_eq!(generate(Some(&whole("[€]{3}"))), None);
        let a = generate(None).unwrap();
        let b = generate(None).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn the_hmac_is_rfc_4231s() {
        // RFC 4231, test case 2.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn derived_passwords_are_the_same_for_the_same_secret_and_job_only() {
        let secret = Secret::new("shared by every worker".to_string());
        for pattern in [
            "[A-Za-z0-9!#%+,.:=?@_-]{12,64}",
            "[0-9]{6,8}",
            "[a-z0-9]{16}",
        ] {
            let re = whole(pattern);
            let a = derive(&secret, "job-1", Some(&re)).unwrap();
            assert!(re.is_match(a.expose()), "{pattern}: {:?}", a.expose());
            assert_eq!(a, derive(&secret, "job-1", Some(&re)).unwrap());
            assert_ne!(a, derive(&secret, "job-2", Some(&re)).unwrap());
            let other = Secret::new("another secret".to_string());
            assert_ne!(a, derive(&other, "job-1", Some(&re)).unwrap());
        }
        // Pinned, so that a change of the derivation (which would make workers of two
        // releases disagree) shows here; an independent implementation of the module
        // documentation's description (Python's hmac) gives the same.
        assert_eq!(
            derive(&secret, "job-1", None).unwrap().expose(),
            "u3JzGHVF?w2xb9UMtW_--4Zn"
        );
    }
}
