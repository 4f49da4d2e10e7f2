//! The expected-node-counts preflight (seed 002): a TPU slice's pool must have as many nodes as
//! its topology needs. Pure: it looks at the nodes' labels only.

/// Why the expected-node-counts preflight cannot pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error("node {node} has no `{label}` label; the expected node count cannot be computed")]
    MissingLabel { node: String, label: String },
    #[error("node {node}: `{label}={value}` is not {what}")]
    BadLabel { node: String, label: String, value: String, what: &'static str },
    #[error("the pool's nodes disagree on `{label}` ({a} and {b})")]
    Inconsistent { label: String, a: String, b: String },
    #[error("the pool has {actual} node(s), but topology {topology} with {per_node} chips per node needs {expected}")]
    CountMismatch { actual: usize, expected: u64, topology: String, per_node: u64 },
}

/// Chips of a TPU topology such as `8x8x8` (512) or `2x4` (8).
pub fn topology_chips(topology: &str) -> Option<u64> {
    let mut product: u64 = 1;
    for dim in topology.split('x') {
        let n: u64 = dim.trim().parse().ok()?;
        if n == 0 {
            return None;
        }
        product = product.checked_mul(n)?;
    }
    Some(product)
}

/// The `expected_node_counts` preflight over the pool's nodes (name and labels): every node carries
/// the same topology and chips-per-node labels, and the pool has topology chips / chips per node
/// nodes. Returns the expected count.
pub fn expected_node_count<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a std::collections::BTreeMap<String, String>)>,
    topology_label: &str,
    count_label: &str,
) -> Result<u64, PreflightError> {
    let mut seen: Option<(String, String)> = None;
    let mut actual = 0usize;
    for (node, labels) in nodes {
        actual += 1;
        let get = |label: &str| {
            labels.get(label).cloned().ok_or_else(|| PreflightError::MissingLabel { node: node.to_string(), label: label.to_string() })
        };
        let pair = (get(topology_label)?, get(count_label)?);
        match &seen {
            None => seen = Some(pair),
            Some(first) if first.0 != pair.0 => {
                return Err(PreflightError::Inconsistent { label: topology_label.into(), a: first.0.clone(), b: pair.0 });
            }
            Some(first) if first.1 != pair.1 => {
                return Err(PreflightError::Inconsistent { label: count_label.into(), a: first.1.clone(), b: pair.1 });
            }
            Some(_) => {}
        }
    }
    let Some((topology, per_node)) = seen else {
        return Err(PreflightError::CountMismatch { actual: 0, expected: 0, topology: String::new(), per_node: 0 });
    };
    let node = String::new();
    let chips = topology_chips(&topology).ok_or_else(|| PreflightError::BadLabel {
        node: node.clone(),
        label: topology_label.into(),
        value: topology.clone(),
        what: "a topology like 8x8x8",
    })?;
    let per: u64 = per_node.parse().ok().filter(|n| *n > 0).ok_or_else(|| PreflightError::BadLabel {
        node,
        label: count_label.into(),
        value: per_node.clone(),
        what: "a positive chip count",
    })?;
    let expected = chips.div_ceil(per);
    if expected != actual as u64 {
        return Err(PreflightError::CountMismatch { actual, expected, topology, per_node: per });
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn topology_chips_multiplies_the_dimensions() {
        assert_eq!(topology_chips("8x8x8"), Some(512));
        assert_eq!(topology_chips("2x4"), Some(8));
        assert_eq!(topology_chips("8x0"), None);
        assert_eq!(topology_chips("eight"), None);
    }

    fn labels(topology: &str, chips: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cloud.google.com/gke-tpu-topology".to_string(), topology.to_string()),
            ("cloud.google.com/gke-accelerator-count".to_string(), chips.to_string()),
        ])
    }

    const T: &str = "cloud.google.com/gke-tpu-topology";
    const C: &str = "cloud.google.com/gke-accelerator-count";

    #[test]
    fn an_8x8x8_slice_with_4_chips_per_node_needs_128_nodes() {
        let l = labels("8x8x8", "4");
        let names: Vec<String> = (0..128).map(|i| format!("n{i}")).collect();
        let pool: Vec<(&str, &BTreeMap<String, String>)> = names.iter().map(|n| (n.as_str(), &l)).collect();
        assert_eq!(expected_node_count(pool.clone(), T, C), Ok(128));
        let short = expected_node_count(pool[..127].iter().copied(), T, C);
        assert!(matches!(short, Err(PreflightError::CountMismatch { actual: 127, expected: 128, .. })), "{short:?}");
    }

    #[test]
    fn the_preflight_names_a_missing_or_disagreeing_label() {
        let good = labels("2x2", "4");
        let other = labels("2x4", "4");
        let none = BTreeMap::new();
        assert!(matches!(expected_node_count([("a", &none)], T, C), Err(PreflightError::MissingLabel { .. })));
        assert!(matches!(expected_node_count([("a", &good), ("b", &other)], T, C), Err(PreflightError::Inconsistent { .. })));
        assert_eq!(expected_node_count([("a", &good)], T, C), Ok(1));
    }
}
