//! Where the runtime crate is: `::mongolock`, or the name the user's
//! `Cargo.toml` gave it (`ml = { package = "mongolock", .. }`), so that a
//! renamed dependency works without `crate = ..`.

use std::path::Path;

/// The runtime crate's name in the crate being compiled, if it was renamed.
pub(crate) fn renamed() -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let manifest = std::fs::read_to_string(Path::new(&dir).join("Cargo.toml")).ok()?;
    rename_in(&manifest).filter(|name| syn::parse_str::<syn::Ident>(name).is_ok())
}

/// Finds `NAME = { package = "mongolock", .. }` or a `[*dependencies.NAME]`
/// table with `package = "mongolock"`. A small reader for these two forms,
/// not a TOML parser: anything else means "not renamed".
fn rename_in(manifest: &str) -> Option<String> {
    let mut table: Option<String> = None;
    for line in manifest.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']').trim();
            table = header
                .rsplit_once("dependencies.")
                .map(|(_, name)| name.trim_matches('"').to_owned());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim().trim_matches('"'), value.trim());
        let renamed = match &table {
            Some(name) if key == "package" && unquote(value) == Some("mongolock") => {
                Some(name.clone())
            }
            None if value.starts_with('{') && inline_package(value) == Some("mongolock") => {
                Some(key.to_owned())
            }
            _ => None,
        };
        if let Some(name) = renamed.filter(|n| n != "mongolock") {
            return Some(name.replace('-', "_"));
        }
    }
    None
}

fn unquote(value: &str) -> Option<&str> {
    value.trim().strip_prefix('"')?.split('"').next()
}

/// `package = "..."` inside an inline table.
fn inline_package(table: &str) -> Option<&str> {
    let start = table.find("package")?;
    let rest = table[start + "package".len()..]
        .trim_start()
        .strip_prefix('=')?;
    unquote(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_table_renames_are_found() {
        let inline = "[dependencies]\nml = { package = \"mongolock\", version = \"0.1\" }\n";
        assert_eq!(rename_in(inline).as_deref(), Some("ml"));
        let table = "[dependencies.my-locks]\nversion = \"0.1\"\npackage = \"mongolock\"\n";
        assert_eq!(rename_in(table).as_deref(), Some("my_locks"));
        let target = "[target.'cfg(unix)'.dependencies]\nlocks = { version = \"0.1\", package = \"mongolock\" }\n";
        assert_eq!(rename_in(target).as_deref(), Some("locks"));
    }

    #[test]
    fn plain_or_other_dependencies_are_not_renames() {
        assert_eq!(rename_in("[dependencies]\nmongolock = \"0.1\"\n"), None);
        assert_eq!(
            rename_in(
                "[dependencies]\nmongolock = { version = \"0.1\", package = \"mongolock\" }\n"
            ),
            None
        );
        assert_eq!(
            rename_in("[dependencies]\nother = { package = \"something-else\" }\n"),
            None
        );
        assert_eq!(rename_in("[package]\nname = \"mongolock\"\n"), None);
    }
}
