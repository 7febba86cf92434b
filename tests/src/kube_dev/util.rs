//! Small helpers shared by the API server and the kubelet simulator: timestamps in the two
//! Kubernetes formats, UIDs, generated names and JSON navigation.

use rand::Rng;
use serde_json::{Map, Value};

/// `metav1.Time`: RFC 3339 with second precision, UTC (`2024-01-02T03:04:05Z`).
pub fn now_time() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `metav1.MicroTime`: RFC 3339 with microseconds, UTC (`2024-01-02T03:04:05.000006Z`).
pub fn now_micro_time() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// `metav1.Time` for an instant `secs` seconds from now.
pub fn time_in(secs: i64) -> String {
    let ts = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random RFC 4122 version-4 UUID in the canonical 8-4-4-4-12 form, like the API server's.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The 5-character suffix the API server appends for `metadata.generateName`
/// (alphabet without vowels and look-alikes, as in `k8s.io/apimachinery/pkg/util/rand`).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Random lowercase hex, e.g. for container IDs.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// `obj[a][b]...` as a string, or `""` (the API server's value for absent fields in selectors).
pub fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = obj;
    for p in path {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// The `metadata` object, created if absent (objects from clients may lack it).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    object_field_mut(obj, "metadata")
}

/// `obj[key]` as a JSON object, replaced by `{}` if absent or not an object.
pub fn object_field_mut<'a>(obj: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("just made an object");
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

/// `metadata.name` of an object.
pub fn name_of(obj: &Value) -> &str {
    str_at(obj, &["metadata", "name"])
}

/// `metadata.namespace` of an object.
pub fn namespace_of(obj: &Value) -> &str {
    str_at(obj, &["metadata", "namespace"])
}

/// `metadata.uid` of an object.
pub fn uid_of(obj: &Value) -> &str {
    str_at(obj, &["metadata", "uid"])
}

/// `metadata.resourceVersion` of an object.
pub fn rv_of(obj: &Value) -> &str {
    str_at(obj, &["metadata", "resourceVersion"])
}

/// Validates a DNS-1123 subdomain (object names of most kinds); returns the API server's message.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
             regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            .to_string())
    }
}

/// Validates a DNS-1123 label (namespace and container names).
pub fn validate_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
             '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .to_string(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn uids_are_version_4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn times_have_the_kubernetes_shapes() {
        assert!(now_time().ends_with('Z'));
        assert_eq!(now_time().len(), 20);
        assert_eq!(now_micro_time().len(), 27);
    }

    #[test]
    fn dns_names_are_checked() {
        assert!(validate_dns_subdomain("web-0.a").is_ok());
        assert!(validate_dns_subdomain("Web").is_err());
        assert!(validate_dns_label("a.b").is_err());
    }
}
