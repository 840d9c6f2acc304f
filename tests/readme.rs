//! Every Rust block of README.md compiles as written in a fresh crate, one
//! outside this workspace that depends only on what the README's
//! `Cargo.toml` block lists (with `mongolock` taken from this checkout).

use std::path::Path;
use std::process::Command;

use mongolock_suite::workspace_root;

/// The fenced blocks of `markdown` in `language`, indentation removed.
fn blocks(markdown: &str, language: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed == format!("```{language}") => current = Some((indent, String::new())),
            Some(_) if trimmed == "```" => {
                if let Some((_, block)) = current.take() {
                    found.push(block);
                }
            }
            Some((indent, block)) => {
                block.push_str(line.get(*indent..).unwrap_or(trimmed));
                block.push('\n');
            }
            None => {}
        }
    }
    found
}

#[test]
fn readme_rust_blocks_compile_in_a_fresh_crate() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let rust = blocks(&readme, "rust");
    assert!(rust.len() >= 5, "the README lost its examples");
    for block in &rust {
        assert!(
            !block.lines().any(|l| l.starts_with("# ") || l == "#"),
            "hidden lines do not compile in a user's crate:\n{block}"
        );
        assert!(block.contains("fn main"), "not a whole program:\n{block}");
    }
    let toml = blocks(&readme, "toml");
    let dependencies = toml
        .iter()
        .find(|t| t.contains("[dependencies]"))
        .expect("a Cargo.toml block");
    let mongolock_path = root.join("mongolock");
    let dependencies = dependencies.replace(
        "mongolock = \"0.1\"",
        &format!(
            "mongolock = {{ path = {:?} }}",
            mongolock_path.display().to_string()
        ),
    );

    let scratch = root.join("target/readme-check");
    let _ = std::fs::remove_dir_all(scratch.join("src"));
    std::fs::create_dir_all(scratch.join("src/bin")).unwrap();
    std::fs::write(
        scratch.join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme-check\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             {dependencies}\n[workspace]\n\n[profile.dev]\ndebug = false\n"
        ),
    )
    .unwrap();
    // The same dependency versions as this workspace, offline.
    std::fs::copy(root.join("Cargo.lock"), scratch.join("Cargo.lock")).unwrap();
    for (i, block) in rust.iter().enumerate() {
        std::fs::write(scratch.join(format!("src/bin/block{i}.rs")), block).unwrap();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&scratch)
        .args(["check", "--bins", "--offline", "--quiet"])
        .env("CARGO_TARGET_DIR", scratch.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "README blocks do not compile in a fresh crate ({}):\n{}",
        Path::new("target/readme-check").display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
