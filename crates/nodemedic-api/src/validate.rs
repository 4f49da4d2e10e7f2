//! Kubernetes' own rules for the strings a request carries into the API server, checked here so a
//! bad value is the caller's 400 naming the field rather than the API server's parse error (or,
//! worse, a label selector the API server accepts and uses: `pool-1,key!=x`). Pure.

/// Longest `requestor`, in characters (it goes into events, the record and logs).
pub const MAX_REQUESTOR: usize = 256;
/// Longest `reason`, in characters (an Event's note is cut at 1 KiB).
pub const MAX_REASON: usize = 1024;

// The same rules as regular expressions, for the OpenAPI document (each function below is the
// rule the API applies; the patterns say the same to a client).
pub const LABEL_VALUE_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";
pub const DNS1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
pub const DNS1123_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const ONE_LINE_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*$";
pub const MULTI_LINE_PATTERN: &str = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$";

/// A label value (`node_pool` is matched as `<node-pool label>=<value>`): at most 63 characters,
/// letters, digits, `-`, `_` and `.`, beginning and ending with a letter or digit.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.len() > 63 {
        return Err(format!("a label value has at most 63 characters, this one has {}", v.len()));
    }
    let ok_chars = v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ok_ends =
        v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()) && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !ok_chars || !ok_ends {
        return Err("a label value is letters, digits, '-', '_' and '.', beginning and ending with a letter or digit \
                    (no label-selector syntax)"
            .into());
    }
    Ok(())
}

/// A DNS-1123 label (namespaces, JobSet names): at most 63 characters, lower-case letters, digits
/// and `-`, beginning and ending with a letter or digit.
pub fn dns1123_label(v: &str) -> Result<(), String> {
    if v.len() > 63 {
        return Err(format!("a DNS-1123 label has at most 63 characters, this one has {}", v.len()));
    }
    if !label_chars(v, false) {
        return Err("a DNS-1123 label is lower-case letters, digits and '-', beginning and ending with a letter or digit".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain (node names): at most 253 characters, dot-separated DNS-1123 labels.
pub fn dns1123_subdomain(v: &str) -> Result<(), String> {
    if v.len() > 253 {
        return Err(format!("a DNS-1123 subdomain has at most 253 characters, this one has {}", v.len()));
    }
    if !label_chars(v, true) || v.split('.').any(|part| part.is_empty() || !label_chars(part, false)) {
        return Err("a DNS-1123 subdomain is lower-case letters, digits, '-' and '.', beginning and ending with a letter or digit".into());
    }
    Ok(())
}

fn label_chars(v: &str, dots: bool) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || (dots && *c == b'.'))
        && b.first().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.last().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Free text (`requestor`, `reason`): at most `max` characters, no control characters (but for
/// line breaks and tabs where `multiline`).
pub fn text(v: &str, max: usize, multiline: bool) -> Result<(), String> {
    let chars = v.chars().count();
    if chars > max {
        return Err(format!("at most {max} characters, this one has {chars}"));
    }
    if v.chars().any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\t' | '\r'))) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selector_syntax_is_not_a_label_value() {
        for bad in ["x in (a,b)", "pool-1,key!=x", "a=b", "-pool", "pool-", "", "pöol", "a b"] {
            assert!(label_value(bad).is_err(), "{bad:?}");
        }
        assert!(label_value(&"p".repeat(64)).is_err());
        for good in ["test-pool", "my_node.pool-1", "A", &"p".repeat(63)] {
            assert!(label_value(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn names_with_control_characters_or_capitals_are_not_dns_names() {
        for bad in ["job\u{0}set", "job\nset", "JobSet", "job_set", "-job", "job-", "", "a..b", ".a"] {
            assert!(dns1123_label(bad).is_err(), "{bad:?}");
            assert!(dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1123_subdomain("node-1.zone-a.example").is_ok());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(dns1123_label("example-jobset").is_ok());
    }

    /// The OpenAPI document's patterns say what the functions decide, on every string tried.
    #[test]
    fn the_documents_patterns_agree_with_the_rules() -> Result<(), regex::Error> {
        let alphabet: Vec<char> = "aZz09-_.,=!() \n\t\u{0}\u{1b}\u{7f}\u{85}éÅ\u{2003}".chars().collect();
        type Rule = fn(&str) -> Result<(), String>;
        let rules: [(&str, Rule); 5] = [
            (LABEL_VALUE_PATTERN, label_value),
            (DNS1123_LABEL_PATTERN, dns1123_label),
            (DNS1123_SUBDOMAIN_PATTERN, |v| dns1123_subdomain(v).and_then(|()| if v.is_empty() { Err(String::new()) } else { Ok(()) })),
            (ONE_LINE_PATTERN, |v| text(v, usize::MAX, false)),
            (MULTI_LINE_PATTERN, |v| text(v, usize::MAX, true)),
        ];
        let mut state: u64 = 16;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        let mut samples: Vec<String> = vec![String::new(), "a".repeat(63), "a".repeat(64), format!("{}.b", "a".repeat(70))];
        for _ in 0..20_000 {
            let len = next(70);
            samples.push((0..len).map(|_| alphabet[next(alphabet.len())]).collect());
        }
        for (pattern, rule) in rules {
            let re = regex::Regex::new(pattern)?;
            for s in &samples {
                // Lengths are the document's maxLength beside the pattern where a pattern cannot say them.
                let length_ok = pattern != DNS1123_SUBDOMAIN_PATTERN || s.len() <= 253;
                assert_eq!(rule(s).is_ok(), re.is_match(s) && length_ok, "{pattern} on {s:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn free_text_is_bounded_and_has_no_control_characters() {
        assert!(text("alice", MAX_REQUESTOR, false).is_ok());
        assert!(text("al\u{7}ice", MAX_REQUESTOR, false).is_err());
        assert!(text("line one\nline two", MAX_REASON, true).is_ok());
        assert!(text("line one\nline two", MAX_REQUESTOR, false).is_err());
        assert!(text(&"x".repeat(MAX_REASON + 1), MAX_REASON, true).is_err());
    }
}
