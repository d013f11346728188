//! Reading pen's HTML status page (the `-w` file, pen 0.34.1's layout) in tests: its structure
//! with the numbers masked, and the cells of its tables. Shared by pen's `service.rs`, which
//! includes this file with `#[path]` (pen cannot depend on this crate), and `compat_stats.rs`.

/// Every maximal run of digits replaced by `#`: what is left is the page's structure.
pub fn structure(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut in_digits = false;
    for c in page.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !in_digits {
            out.push('#');
        }
        in_digits = c.is_ascii_digit();
    }
    out
}

/// The cells of each `<tr>` row of the table that follows `heading` (header row excluded).
pub fn table_rows(page: &str, heading: &str) -> Vec<Vec<String>> {
    let table = &page[page.find(heading).expect("heading")..];
    let table = &table[..table.find("</table>").expect("end of table")];
    table
        .split("<tr>\n")
        .skip(2)
        .map(|row| {
            row.lines()
                .filter_map(|l| l.strip_prefix("<td>")?.strip_suffix("</td>"))
                .map(String::from)
                .collect()
        })
        .collect()
}
