//! Token checks: JWT verification, tenant and store rules, the secret file.
//!
//! A `Verifier` accepts tokens signed with exactly the algorithm in
//! `auth.algorithm`; any other `alg` header, `none` included, is refused
//! before a signature is looked at (the algorithm-confusion attack needs the
//! verifier to trust the header, and ours never does).
//!
//! The HS256 secret is either configured or generated once into
//! `<data_dir>/jwt_secret`. The secret is the file's text (64 hex digits), so
//! copying that text into `auth.jwt_secret` elsewhere gives the same key.
//!
//! Nothing here logs or formats a token or a secret; errors name files only.
//! File modes use `std::os::unix`: the server targets Linux edge boxes.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, AuthConfig, MIN_SECRET_BYTES};

/// Name of the generated HS256 secret file inside `storage.data_dir`.
pub const SECRET_FILE_NAME: &str = "jwt_secret";

/// Random bytes in a generated secret (written as twice as many hex digits).
pub const GENERATED_SECRET_BYTES: usize = 32;

/// Seconds of clock skew tolerated on `exp` and `nbf`. Zero: a token is dead
/// at its `exp`. Tokens are usually minted on this box (`stockalert token`),
/// so there is no skew to forgive.
pub const LEEWAY_SECONDS: u64 = 0;

/// The claims stockalert reads from a token. Other claims (`iat`, `iss`...)
/// are allowed and ignored, except `aud`: we configure no audience, so a
/// token that names one is meant for someone else and is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The tenant the token acts for; required and non-empty.
    pub tenant_id: String,
    /// Expiry, seconds since the Unix epoch; required and checked.
    pub exp: u64,
    /// Who the token was issued to, for logs; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Limits the token to this one store when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_code: Option<String>,
    /// Limits the token to these stores when present (empty: no store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_codes: Option<Vec<String>>,
}

impl Claims {
    /// Whether the token may act on `store` of its tenant. Without
    /// `store_code` and `store_codes` it covers every store; with either it
    /// covers only what it lists; with both, only stores both allow (the
    /// stricter reading of a token that names its stores twice).
    ///
    /// A tenant-wide operation (e.g. a subscription to all stores) must still
    /// filter per store with this method when the token is limited.
    pub fn allows_store(&self, store: &str) -> bool {
        let by_code = self.store_code.as_deref().is_none_or(|code| code == store);
        let by_list = self
            .store_codes
            .as_ref()
            .is_none_or(|codes| codes.iter().any(|c| c == store));
        by_code && by_list
    }

    /// Whether the token limits itself to particular stores.
    pub fn is_store_limited(&self) -> bool {
        self.store_code.is_some() || self.store_codes.is_some()
    }

    /// Whether the token has expired at `now_unix` (seconds since the epoch).
    /// Per RFC 7519 a token is expired at and after its `exp`; live
    /// connections use this to close with `AuthError::Expired`.
    pub fn is_expired_at(&self, now_unix: u64) -> bool {
        now_unix >= self.exp
    }
}

/// Why a request was not authorized. Display is the client-facing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token, or an empty one, came with the request.
    Missing,
    /// The token is malformed, badly signed, uses another algorithm, lacks a
    /// required claim or (at connect time) has expired.
    Invalid,
    /// A token that was valid when the connection opened has since expired.
    Expired,
    /// The token's tenant is not the one the request addresses.
    TenantMismatch,
    /// The token is limited to stores that do not include the requested one.
    StoreDenied,
}

impl AuthError {
    /// The HTTP status for this failure: 401 when the caller is not
    /// authenticated, 403 when it is but may not touch the resource.
    pub fn http_status(self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid | AuthError::Expired => 401,
            AuthError::TenantMismatch | AuthError::StoreDenied => 403,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "No token provided",
            AuthError::Invalid => "Authentication failed",
            AuthError::Expired => "Token expired",
            AuthError::TenantMismatch => "Tenant ID mismatch",
            AuthError::StoreDenied => "Store access denied",
        })
    }
}

impl std::error::Error for AuthError {}

/// Why token checking or signing could not be set up. These are operator
/// problems found at start-up or by `stockalert token`.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthSetupError {
    /// HS256 was configured but no secret was given to the verifier.
    MissingSecret,
    /// RS256/ES256 was configured without `auth.public_key_file`.
    MissingKeyFile(Algorithm),
    /// The public key file could not be read.
    ReadKey {
        /// The configured key file.
        path: PathBuf,
        /// What the OS reported.
        source: io::Error,
    },
    /// The public key file is not a PEM key usable with the algorithm.
    BadKey {
        /// The configured key file.
        path: PathBuf,
        /// The algorithm it was meant for.
        algorithm: Algorithm,
    },
    /// A shared secret was asked for while the algorithm uses a public key.
    NotSharedSecret(Algorithm),
    /// The secret file could not be read, created or linked into place.
    SecretFile {
        /// The secret file (or its directory).
        path: PathBuf,
        /// What the OS reported.
        source: io::Error,
    },
    /// The secret file exists but holds no usable secret.
    BadSecretFile {
        /// The secret file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: &'static str,
    },
    /// The OS random source failed while generating a secret.
    Random(getrandom::Error),
    /// The token could not be signed.
    Sign(jsonwebtoken::errors::Error),
}

impl fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthSetupError::MissingSecret => f.write_str("no hs256 secret was provided"),
            AuthSetupError::MissingKeyFile(alg) => {
                write!(f, "auth.public_key_file is required for {alg}")
            }
            AuthSetupError::ReadKey { path, source } => {
                write!(
                    f,
                    "cannot read public key file {}: {source}",
                    path.display()
                )
            }
            AuthSetupError::BadKey { path, algorithm } => {
                write!(
                    f,
                    "{} is not a pem public key usable with {algorithm}",
                    path.display()
                )
            }
            AuthSetupError::NotSharedSecret(alg) => {
                write!(
                    f,
                    "{alg} checks tokens with a public key, not a shared secret"
                )
            }
            AuthSetupError::SecretFile { path, source } => {
                write!(
                    f,
                    "cannot read or create secret file {}: {source}",
                    path.display()
                )
            }
            AuthSetupError::BadSecretFile { path, reason } => {
                write!(f, "secret file {} {reason}", path.display())
            }
            AuthSetupError::Random(e) => write!(f, "cannot get random bytes for a secret: {e}"),
            AuthSetupError::Sign(e) => write!(f, "cannot sign token: {e}"),
        }
    }
}

impl std::error::Error for AuthSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthSetupError::ReadKey { source, .. } | AuthSetupError::SecretFile { source, .. } => {
                Some(source)
            }
            AuthSetupError::Sign(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks tokens for one algorithm and one key. Built once at start-up and
/// shared by every connection; verifying does not mutate it.
pub struct Verifier {
    /// The key tokens must be signed with. `None` only when `hs256` was given
    /// an empty secret; then every token is refused.
    key: Option<DecodingKey>,
    /// Rules applied after the signature: exactly one allowed algorithm,
    /// `exp` required, `nbf` honoured, `LEEWAY_SECONDS` of skew.
    validation: Validation,
    /// The algorithm, kept for `Debug` and logs.
    algorithm: Algorithm,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of the output, even though it may be public.
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier the configuration asks for. `secret` is the HS256
    /// key (see `resolve_secret`) and is ignored for RS256/ES256, whose PEM
    /// public key is read from `auth.public_key_file` now, so a bad file
    /// stops start-up instead of failing every request.
    ///
    /// Shortcut: an RSA key whose PEM framing is fine but whose numbers are
    /// not a valid key is only noticed at the first verification, because
    /// the RSA backend parses the key lazily and reports a plain mismatch.
    pub fn from_config(
        auth: &AuthConfig,
        secret: Option<&[u8]>,
    ) -> Result<Verifier, AuthSetupError> {
        if auth.algorithm == Algorithm::Hs256 {
            let secret = secret
                .filter(|s| !s.is_empty())
                .ok_or(AuthSetupError::MissingSecret)?;
            return Ok(Verifier::hs256(secret));
        }

        let path = auth
            .public_key_file
            .as_deref()
            .ok_or(AuthSetupError::MissingKeyFile(auth.algorithm))?;
        let pem = fs::read(path).map_err(|source| AuthSetupError::ReadKey {
            path: path.to_owned(),
            source,
        })?;
        let bad_key = || AuthSetupError::BadKey {
            path: path.to_owned(),
            algorithm: auth.algorithm,
        };

        let key = match auth.algorithm {
            Algorithm::Rs256 => DecodingKey::from_rsa_pem(&pem).map_err(|_| bad_key())?,
            Algorithm::Es256 => {
                let key = DecodingKey::from_ec_pem(&pem).map_err(|_| bad_key())?;

                // Building an ES256 checker parses the curve point, so a
                // point that is not on P-256 shows up here rather than later.
                jsonwebtoken::crypto::verify("", b"", &key, jsonwebtoken::Algorithm::ES256)
                    .map_err(|_| bad_key())?;
                key
            }
            Algorithm::Hs256 => return Err(AuthSetupError::MissingSecret),
        };

        Ok(Verifier::with_key(Some(key), auth.algorithm))
    }

    /// A verifier for HS256 tokens signed with `secret`. An empty secret
    /// yields a verifier that refuses every token.
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::with_key(DecodingKey::from_secret(secret).ok(), Algorithm::Hs256)
    }

    /// Shared tail of the constructors: the validation rules.
    fn with_key(key: Option<DecodingKey>, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(jwt_algorithm(algorithm));
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        Verifier {
            key,
            validation,
            algorithm,
        }
    }

    /// The algorithm this verifier accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks signature, algorithm and claims of `token` and returns its
    /// claims. Every failure, expiry included, is `AuthError::Invalid`: a
    /// client that presents a dead token learns no more than that it failed.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let Some(key) = &self.key else {
            return Err(AuthError::Invalid);
        };

        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            crate::event!(
                log::Level::Debug,
                "token_rejected",
                reason = rejection_reason(e.kind())
            );
            AuthError::Invalid
        })?;

        if data.claims.tenant_id.is_empty() {
            crate::event!(
                log::Level::Debug,
                "token_rejected",
                reason = "empty tenant_id"
            );
            return Err(AuthError::Invalid);
        }

        Ok(data.claims)
    }

    /// Authorizes a request for `store` of `tenant`: the token must be
    /// present (`None` or empty is `Missing`), valid, for this tenant, and
    /// allowed this store, checked in that order.
    pub fn authorize(
        &self,
        token: Option<&str>,
        tenant: &str,
        store: &str,
    ) -> Result<Claims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;

        let claims = self.verify(token)?;

        if claims.tenant_id != tenant {
            return Err(AuthError::TenantMismatch);
        }

        if !claims.allows_store(store) {
            return Err(AuthError::StoreDenied);
        }

        Ok(claims)
    }
}

/// Signs `claims` as an HS256 token with `secret`.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthSetupError> {
    if secret.is_empty() {
        return Err(AuthSetupError::MissingSecret);
    }
    let key = EncodingKey::from_secret(secret).map_err(AuthSetupError::Sign)?;
    jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::HS256), claims, &key)
        .map_err(AuthSetupError::Sign)
}

/// The HS256 secret: `auth.jwt_secret` when configured, else the content of
/// `<data_dir>/jwt_secret`, which is created when absent.
///
/// Returns the secret bytes and, when they came from the file, its path (for
/// the server to log; the secret itself must never be logged).
///
/// Creation is race-free: the new secret (32 random bytes from the OS, as
/// hex) is written and synced to a private temporary file (mode 0600), then
/// hard-linked to the final name. A link never replaces an existing file, so
/// when two processes start together one wins and the other reads the
/// winner's complete file; nobody ever sees a half-written secret.
///
/// `data_dir` is created (mode 0700) if missing. A secret file readable by
/// other users is used but logged as a warning.
pub fn resolve_secret(
    auth: &AuthConfig,
    data_dir: &Path,
) -> Result<(Vec<u8>, Option<PathBuf>), AuthSetupError> {
    if auth.algorithm != Algorithm::Hs256 {
        return Err(AuthSetupError::NotSharedSecret(auth.algorithm));
    }

    if let Some(secret) = &auth.jwt_secret {
        return Ok((secret.expose().as_bytes().to_vec(), None));
    }

    let path = data_dir.join(SECRET_FILE_NAME);
    match read_secret_file(&path) {
        Ok(secret) => return Ok((secret, Some(path))),
        Err(AuthSetupError::SecretFile { source, .. })
            if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }

    // Absent: create it, or lose a race and read the winner's file.
    let secret = create_secret_file(data_dir, &path)?;
    Ok((secret, Some(path)))
}

/// Reads and checks an existing secret file; trailing whitespace (a newline
/// added by an editor) is not part of the secret.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    let file_error = |source| AuthSetupError::SecretFile {
        path: path.to_owned(),
        source,
    };

    let mut text = fs::read(path).map_err(file_error)?;
    let meta = fs::metadata(path).map_err(file_error)?;
    if meta.permissions().mode() & 0o077 != 0 {
        crate::event!(
            log::Level::Warn,
            "jwt_secret_file_exposed",
            path = path.display().to_string(),
            message = "the secret file is readable by other users; chmod 600 it"
        );
    }

    while text.last().is_some_and(|b| b.is_ascii_whitespace()) {
        text.pop();
    }
    if text.is_empty() {
        return Err(AuthSetupError::BadSecretFile {
            path: path.to_owned(),
            reason: "is empty",
        });
    }
    if text.len() < MIN_SECRET_BYTES {
        return Err(AuthSetupError::BadSecretFile {
            path: path.to_owned(),
            reason: "holds fewer than 32 bytes",
        });
    }

    Ok(text)
}

/// Generates a secret and links it into place at `path` unless another
/// process got there first; returns the secret now at `path`.
fn create_secret_file(data_dir: &Path, path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    let dir_error = |source| AuthSetupError::SecretFile {
        path: data_dir.to_owned(),
        source,
    };

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(dir_error)?;

    // Generate the secret.
    let mut random = [0u8; GENERATED_SECRET_BYTES];
    getrandom::fill(&mut random).map_err(AuthSetupError::Random)?;
    let secret = hex(&random).into_bytes();

    // Write it to a temporary name unique to this process and attempt.
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(AuthSetupError::Random)?;
    let tmp = data_dir.join(format!(
        ".{SECRET_FILE_NAME}.{}.{}.tmp",
        std::process::id(),
        hex(&tag)
    ));
    let tmp_error = |source| AuthSetupError::SecretFile {
        path: tmp.clone(),
        source,
    };
    write_private_file(&tmp, &secret).map_err(tmp_error)?;

    // Publish it; an existing file means another process won the race.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(data_dir).map_err(dir_error)?;
            Ok(secret)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret_file(path),
        Err(source) => Err(AuthSetupError::SecretFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` (which must not exist) with mode 0600, writes `content`
/// plus a newline and syncs it. On failure the partial file is removed.
fn write_private_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file.write_all(content).and_then(|()| file.write_all(b"\n"));
    let result = written.and_then(|()| file.sync_all());
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Syncs a directory so a new name in it survives a power cut.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Our algorithm enum in jsonwebtoken's terms.
fn jwt_algorithm(algorithm: Algorithm) -> jsonwebtoken::Algorithm {
    match algorithm {
        Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
        Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
    }
}

/// A short, value-free description of why jsonwebtoken refused a token, for
/// debug logs (its own messages may quote claim values).
fn rejection_reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet (nbf)",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "wrong algorithm",
        ErrorKind::MissingRequiredClaim(_) => "missing required claim",
        ErrorKind::InvalidAudience => "audience present",
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => "bad claims",
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => "malformed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    /// A secret long enough for the config rules.
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// An `exp` far in the future (2100-01-01), so no test depends on the
    /// clock beyond "it is not yet 2100".
    const FUTURE: u64 = 4_102_444_800;

    /// An `exp` long past (2001-09-09).
    const PAST: u64 = 1_000_000_000;

    /// Directory holding the test-only key fixtures.
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Claims for tenant `t1` with no store limit.
    fn claims() -> Claims {
        Claims {
            tenant_id: "t1".to_owned(),
            exp: FUTURE,
            sub: Some("pos-7".to_owned()),
            store_code: None,
            store_codes: None,
        }
    }

    /// Signs arbitrary JSON claims with `alg` and `key`.
    fn sign_json(
        alg: jsonwebtoken::Algorithm,
        key: &EncodingKey,
        body: serde_json::Value,
    ) -> String {
        jsonwebtoken::encode(&Header::new(alg), &body, key).unwrap()
    }

    /// Signs arbitrary JSON claims with HS256 and `SECRET`.
    fn hs256_json(body: serde_json::Value) -> String {
        sign_json(
            jsonwebtoken::Algorithm::HS256,
            &EncodingKey::from_secret(SECRET).unwrap(),
            body,
        )
    }

    /// Base64url without padding, for hand-made tokens.
    fn b64url(data: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    /// An auth section for a public-key algorithm and fixture file.
    fn pk_auth(algorithm: Algorithm, file: &str) -> AuthConfig {
        AuthConfig {
            algorithm,
            public_key_file: Some(fixture(file)),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn good_token_verifies_and_round_trips_claims() {
        let token = sign_hs256(SECRET, &claims()).unwrap();
        assert_eq!(Verifier::hs256(SECRET).verify(&token), Ok(claims()));
    }

    #[test]
    fn signed_token_omits_absent_optional_claims() {
        let token = sign_hs256(SECRET, &claims()).unwrap();
        let payload: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(
            payload,
            json!({"tenant_id": "t1", "exp": FUTURE, "sub": "pos-7"})
        );
    }

    #[test]
    fn wrong_secret_is_invalid() {
        let token = sign_hs256(b"another-secret-another-secret-xx", &claims()).unwrap();
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn expired_token_is_invalid_at_connect() {
        let token = sign_hs256(
            SECRET,
            &Claims {
                exp: PAST,
                ..claims()
            },
        )
        .unwrap();
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn token_not_yet_valid_is_invalid() {
        let token = hs256_json(json!({"tenant_id": "t1", "exp": FUTURE, "nbf": FUTURE - 1}));
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn missing_exp_is_invalid() {
        let token = hs256_json(json!({"tenant_id": "t1"}));
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn missing_or_empty_tenant_is_invalid() {
        let verifier = Verifier::hs256(SECRET);
        let token = hs256_json(json!({"exp": FUTURE, "sub": "x"}));
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));
        let token = hs256_json(json!({"tenant_id": "", "exp": FUTURE}));
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn token_with_audience_is_invalid() {
        let token = hs256_json(json!({"tenant_id": "t1", "exp": FUTURE, "aud": "other-app"}));
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn extra_claims_are_ignored() {
        let token = hs256_json(json!({"tenant_id": "t1", "exp": FUTURE, "iat": 5, "iss": "x"}));
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token).unwrap().tenant_id,
            "t1"
        );
    }

    #[test]
    fn alg_none_is_invalid() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64url(format!(r#"{{"tenant_id":"t1","exp":{FUTURE}}}"#).as_bytes());
        let verifier = Verifier::hs256(SECRET);
        assert_eq!(
            verifier.verify(&format!("{header}.{body}.")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verifier.verify(&format!("{header}.{body}")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn other_hmac_algorithm_with_same_secret_is_invalid() {
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let body = json!({"tenant_id": "t1", "exp": FUTURE});
        let token = sign_json(jsonwebtoken::Algorithm::HS512, &key, body);
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let verifier = Verifier::hs256(SECRET);
        for token in ["x", "a.b.c", "....", "eyJ.eyJ.sig", "\u{0}"] {
            assert_eq!(verifier.verify(token), Err(AuthError::Invalid), "{token:?}");
        }
    }

    #[test]
    fn empty_secret_verifier_refuses_everything() {
        let token = sign_hs256(SECRET, &claims()).unwrap();
        assert_eq!(Verifier::hs256(b"").verify(&token), Err(AuthError::Invalid));
        assert!(matches!(
            sign_hs256(b"", &claims()),
            Err(AuthSetupError::MissingSecret)
        ));
    }

    #[test]
    fn hs256_token_against_rs256_verifier_is_invalid() {
        let verifier =
            Verifier::from_config(&pk_auth(Algorithm::Rs256, "rsa_public.pem"), None).unwrap();
        let token = sign_hs256(SECRET, &claims()).unwrap();
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));

        // The classic confusion: HMAC keyed with the public key's own bytes.
        let pem = fs::read(fixture("rsa_public.pem")).unwrap();
        let token = sign_hs256(&pem, &claims()).unwrap();
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn rs256_token_verifies_with_public_key() {
        let pem = fs::read(fixture("rsa_test_only_private.pem")).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::RS256),
            &claims(),
            &key,
        )
        .unwrap();

        let auth = pk_auth(Algorithm::Rs256, "rsa_public.pem");
        let verifier = Verifier::from_config(&auth, None).unwrap();
        assert_eq!(verifier.algorithm(), Algorithm::Rs256);
        assert_eq!(verifier.verify(&token), Ok(claims()));

        // The same key under PS256 is another algorithm, hence refused.
        let token = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::PS256),
            &claims(),
            &key,
        )
        .unwrap();
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn es256_token_verifies_with_public_key() {
        let pem = fs::read(fixture("ec_test_only_private.pem")).unwrap();
        let key = EncodingKey::from_ec_pem(&pem).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::ES256),
            &claims(),
            &key,
        )
        .unwrap();

        let es = Verifier::from_config(&pk_auth(Algorithm::Es256, "ec_public.pem"), None).unwrap();
        assert_eq!(es.verify(&token), Ok(claims()));

        // An ES256 token means nothing to an RS256 verifier.
        let rs =
            Verifier::from_config(&pk_auth(Algorithm::Rs256, "rsa_public.pem"), None).unwrap();
        assert_eq!(rs.verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn from_config_rejects_unusable_key_files() {
        let err =
            Verifier::from_config(&pk_auth(Algorithm::Rs256, "absent.pem"), None).unwrap_err();
        assert!(matches!(err, AuthSetupError::ReadKey { .. }), "{err}");

        let err =
            Verifier::from_config(&pk_auth(Algorithm::Es256, "rsa_public.pem"), None).unwrap_err();
        assert!(matches!(err, AuthSetupError::BadKey { .. }), "{err}");

        let err =
            Verifier::from_config(&pk_auth(Algorithm::Rs256, "ec_public.pem"), None).unwrap_err();
        assert!(matches!(err, AuthSetupError::BadKey { .. }), "{err}");

        let err =
            Verifier::from_config(&pk_auth(Algorithm::Rs256, "README.md"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a pem public key usable with RS256",
                fixture("README.md").display()
            )
        );

        let auth = AuthConfig {
            algorithm: Algorithm::Es256,
            ..AuthConfig::default()
        };
        let err = Verifier::from_config(&auth, None).unwrap_err();
        assert!(matches!(
            err,
            AuthSetupError::MissingKeyFile(Algorithm::Es256)
        ));
    }

    #[test]
    fn from_config_hs256_needs_a_secret() {
        let auth = AuthConfig::default();
        assert!(matches!(
            Verifier::from_config(&auth, None),
            Err(AuthSetupError::MissingSecret)
        ));
        assert!(matches!(
            Verifier::from_config(&auth, Some(b"")),
            Err(AuthSetupError::MissingSecret)
        ));
        let verifier = Verifier::from_config(&auth, Some(SECRET)).unwrap();
        let token = sign_hs256(SECRET, &claims()).unwrap();
        assert_eq!(verifier.verify(&token), Ok(claims()));
    }

    #[test]
    fn authorize_checks_presence_then_validity_then_tenant_then_store() {
        let verifier = Verifier::hs256(SECRET);
        let limited = Claims {
            store_code: Some("s1".to_owned()),
            ..claims()
        };
        let token = sign_hs256(SECRET, &limited).unwrap();

        assert_eq!(
            verifier.authorize(None, "t1", "s1"),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verifier.authorize(Some(""), "t1", "s1"),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verifier.authorize(Some("junk"), "t2", "s9"),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verifier.authorize(Some(&token), "t2", "s9"),
            Err(AuthError::TenantMismatch)
        );
        assert_eq!(
            verifier.authorize(Some(&token), "t1", "s9"),
            Err(AuthError::StoreDenied)
        );
        assert_eq!(verifier.authorize(Some(&token), "t1", "s1"), Ok(limited));
    }

    #[test]
    fn store_limits() {
        let open = claims();
        assert!(open.allows_store("any") && !open.is_store_limited());

        let one = Claims {
            store_code: Some("s1".to_owned()),
            ..claims()
        };
        assert!(one.allows_store("s1"));
        assert!(!one.allows_store("s2"));

        let list = Claims {
            store_codes: Some(vec!["s1".into(), "s2".into()]),
            ..claims()
        };
        assert!(list.allows_store("s1") && list.allows_store("s2"));
        assert!(!list.allows_store("s3"));

        let none = Claims {
            store_codes: Some(Vec::new()),
            ..claims()
        };
        assert!(!none.allows_store("s1") && none.is_store_limited());

        let both = Claims {
            store_code: Some("s1".to_owned()),
            store_codes: Some(vec!["s1".into(), "s2".into()]),
            ..claims()
        };
        assert!(both.allows_store("s1"));
        assert!(!both.allows_store("s2"));
    }

    #[test]
    fn store_codes_survive_a_token_round_trip() {
        let verifier = Verifier::hs256(SECRET);
        let token = hs256_json(json!({"tenant_id": "t1", "exp": FUTURE, "store_codes": ["a"]}));
        assert_eq!(
            verifier
                .authorize(Some(&token), "t1", "a")
                .unwrap()
                .store_codes
                .unwrap(),
            ["a"]
        );
        assert_eq!(
            verifier.authorize(Some(&token), "t1", "b"),
            Err(AuthError::StoreDenied)
        );
    }

    #[test]
    fn expiry_for_live_connections_uses_explicit_now() {
        let c = Claims {
            exp: 1000,
            ..claims()
        };
        assert!(!c.is_expired_at(999));
        assert!(c.is_expired_at(1000));
        assert!(c.is_expired_at(5000));
    }

    #[test]
    fn error_messages_and_statuses() {
        let cases = [
            (AuthError::Missing, "No token provided", 401),
            (AuthError::Invalid, "Authentication failed", 401),
            (AuthError::Expired, "Token expired", 401),
            (AuthError::TenantMismatch, "Tenant ID mismatch", 403),
            (AuthError::StoreDenied, "Store access denied", 403),
        ];
        for (err, msg, status) in cases {
            assert_eq!(err.to_string(), msg);
            assert_eq!(err.http_status(), status);
        }
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested/data");
        let auth = AuthConfig::default();

        let (first, path) = resolve_secret(&auth, &data_dir).unwrap();
        let path = path.unwrap();
        assert_eq!(path, data_dir.join("jwt_secret"));
        assert_eq!(first.len(), 2 * GENERATED_SECRET_BYTES);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let (second, again) = resolve_secret(&auth, &data_dir).unwrap();
        assert_eq!(second, first);
        assert_eq!(again, Some(path));

        // Only the secret is left behind: no temporary files.
        assert_eq!(fs::read_dir(&data_dir).unwrap().count(), 1);
    }

    #[test]
    fn generated_secrets_differ_between_data_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthConfig::default();
        let (a, _) = resolve_secret(&auth, &dir.path().join("a")).unwrap();
        let (b, _) = resolve_secret(&auth, &dir.path().join("b")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn secret_file_written_by_hand_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let text = "k".repeat(40);
        fs::write(dir.path().join("jwt_secret"), format!("{text}\n\n")).unwrap();
        let (secret, _) = resolve_secret(&AuthConfig::default(), dir.path()).unwrap();
        assert_eq!(secret, text.as_bytes());
    }

    #[test]
    fn empty_or_short_secret_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_secret");
        fs::write(&path, "\n").unwrap();
        let err = resolve_secret(&AuthConfig::default(), dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("secret file {} is empty", path.display())
        );

        fs::write(&path, "short\n").unwrap();
        let err = resolve_secret(&AuthConfig::default(), dir.path()).unwrap_err();
        assert!(matches!(err, AuthSetupError::BadSecretFile { .. }), "{err}");
    }

    #[test]
    fn configured_secret_wins_and_no_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "c".repeat(32);
        let auth = AuthConfig {
            jwt_secret: Some(Secret::new(secret.clone())),
            ..AuthConfig::default()
        };
        let (bytes, path) = resolve_secret(&auth, dir.path()).unwrap();
        assert_eq!(bytes, secret.as_bytes());
        assert_eq!(path, None);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn public_key_algorithms_have_no_shared_secret() {
        let dir = tempfile::tempdir().unwrap();
        let auth = pk_auth(Algorithm::Rs256, "rsa_public.pem");
        let err = resolve_secret(&auth, dir.path()).unwrap_err();
        assert!(matches!(
            err,
            AuthSetupError::NotSharedSecret(Algorithm::Rs256)
        ));
    }

    #[test]
    fn verifier_debug_hides_the_key() {
        let debug = format!("{:?}", Verifier::hs256(SECRET));
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert!(debug.contains("Hs256"));
    }
}
