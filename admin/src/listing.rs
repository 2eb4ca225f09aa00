//! Long lists in pages that stay small: searched by a substring, sorted naturally (`ag2` before
//! `ag10`), and paged by a cursor (the last name shown), so a page of 10,000 agents holds one
//! page's rows. Pure functions over the names; it renders nothing and reads no store.

use std::cmp::Ordering;

/// Rows per page.
pub(crate) const PAGE: usize = 50;

/// Compares names as people read them: runs of digits by their value, the rest by character,
/// ASCII case ignored (ties broken by the bytes, so the order is total).
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (n, rest_x) = digits(x);
                let (m, rest_y) = digits(y);
                // Leading zeros do not count; a longer run of significant digits is larger.
                let (n, m) = (trim_zeros(n), trim_zeros(m));
                let by_value = n.len().cmp(&m.len()).then_with(|| n.cmp(m));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(c), Some(d)) => {
                let by_char = c.to_ascii_lowercase().cmp(&d.to_ascii_lowercase());
                if by_char != Ordering::Equal {
                    return by_char;
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

fn digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let zeros = s.iter().take_while(|&&c| c == b'0').count();
    &s[zeros..]
}

/// One page of `items` (named by `name`): those whose text (`text`) contains `query` (ASCII
/// case ignored), in natural order, after the cursor `after`; and the cursor of the next page
/// when there is one.
pub(crate) fn page<'a, T>(
    items: &'a [T],
    name: fn(&T) -> &str,
    text: impl Fn(&T) -> String,
    query: &str,
    after: Option<&str>,
) -> (Vec<&'a T>, Option<String>) {
    let query = query.trim().to_ascii_lowercase();
    let mut found: Vec<&T> = items
        .iter()
        .filter(|i| query.is_empty() || text(i).to_ascii_lowercase().contains(&query))
        .filter(|i| after.is_none_or(|a| natural_cmp(name(i), a) == Ordering::Greater))
        .collect();
    found.sort_by(|a, b| natural_cmp(name(a), name(b)));
    let next = (found.len() > PAGE).then(|| name(found[PAGE - 1]).to_owned());
    found.truncate(PAGE);
    (found, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_people_read_them() {
        let mut names = vec!["ag100", "ag10", "Ag2", "ag1", "ag02", "ag", "b1", "ag10x"];
        names.sort_by(|a, b| natural_cmp(a, b));
        // ag02 and Ag2 are equal as people read them; the bytes break the tie.
        assert_eq!(
            names,
            ["ag", "ag1", "Ag2", "ag02", "ag10", "ag10x", "ag100", "b1"]
        );
        assert_eq!(natural_cmp("ag2", "ag2"), Ordering::Equal);
        assert_ne!(natural_cmp("ag02", "ag2"), Ordering::Equal, "a total order");
    }

    /// Pages follow one another through the cursor without a gap or a repeat; a search keeps
    /// only what contains it.
    #[test]
    fn pages_chain_by_cursor_and_search_filters() {
        let names: Vec<String> = (1..=120).rev().map(|i| format!("ag{i}")).collect();
        let by: fn(&String) -> &str = String::as_str;
        let text = |s: &String| s.clone();
        let (first, next) = page(&names, by, text, "", None);
        assert_eq!(
            (first.len(), first[0].as_str(), first[49].as_str()),
            (50, "ag1", "ag50")
        );
        let (second, next) = page(&names, by, text, "", next.as_deref());
        assert_eq!(second[0], "ag51");
        let (third, next) = page(&names, by, text, "", next.as_deref());
        assert_eq!((third.len(), third[19].as_str(), next), (20, "ag120", None));
        let (found, next) = page(&names, by, text, "AG11", None);
        assert_eq!(
            found,
            [
                "ag11", "ag110", "ag111", "ag112", "ag113", "ag114", "ag115", "ag116", "ag117",
                "ag118", "ag119"
            ]
        );
        assert_eq!(next, None);
    }
}
