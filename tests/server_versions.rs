//! Every query operator, pipeline stage, expression and system variable the
//! runtime crate sends, checked against the server versions it supports
//! (MongoDB 4.4, 5.0, 6.0, 7.0, 8.0).
//!
//! The test reads the runtime's source and finds every `"$name"` and
//! `"$$NAME"` string in it (outside comments and test modules). Each must be
//! listed in [`SENT`] with the version that introduced it, or in
//! [`NOT_OPERATORS`] (the crate's own `$$let` variables). A new operator
//! fails the test until it is listed; one introduced after 4.4 fails it for
//! good, with the manual's page. [`LACKS`] is what each supported version
//! lacks that a newcomer might reach for, with the manual's page.

use std::collections::BTreeSet;
use std::path::Path;

/// The oldest server version the crate supports.
const FLOOR: (u32, u32) = (4, 4);

/// What the crate sends: name and the server version that introduced it in
/// the form used (an aggregation expression's version where it is used as
/// one, a stage's where it is used as a stage).
const SENT: &[(&str, (u32, u32))] = &[
    // Query and update operators.
    ("$and", (2, 0)),
    ("$currentDate", (2, 6)),
    ("$eq", (3, 0)),
    ("$exists", (1, 0)),
    ("$expr", (3, 6)),
    ("$gt", (1, 0)),
    ("$gte", (1, 0)),
    ("$in", (3, 4)),
    ("$lt", (1, 0)),
    ("$lte", (1, 0)),
    ("$ne", (1, 0)),
    ("$not", (1, 0)),
    ("$or", (1, 6)),
    ("$regex", (1, 0)),
    ("$setOnInsert", (2, 4)),
    // Update-pipeline stages ($set and $unset also as update operators)
    // and change-stream pipeline stages.
    ("$match", (2, 2)),
    ("$project", (2, 2)),
    ("$replaceWith", (4, 2)),
    ("$set", (4, 2)),
    ("$unset", (4, 2)),
    // Aggregation expressions.
    ("$abs", (3, 2)),
    ("$add", (2, 2)),
    ("$arrayElemAt", (3, 2)),
    ("$concat", (2, 4)),
    ("$concatArrays", (3, 2)),
    ("$cond", (2, 2)),
    ("$filter", (3, 2)),
    // Two arguments only: more came with 5.0.
    ("$ifNull", (2, 2)),
    ("$isNumber", (4, 4)),
    ("$let", (2, 2)),
    ("$literal", (2, 6)),
    ("$map", (2, 6)),
    ("$max", (2, 2)),
    ("$mergeObjects", (3, 6)),
    ("$min", (2, 2)),
    ("$multiply", (2, 2)),
    ("$reduce", (3, 4)),
    ("$size", (2, 6)),
    ("$slice", (3, 2)),
    ("$subtract", (2, 2)),
    ("$toDate", (4, 0)),
    ("$toLong", (4, 0)),
    // System variables.
    ("$$NOW", (4, 2)),
    ("$$REMOVE", (3, 6)),
    ("$$ROOT", (2, 2)),
    // `$reduce`'s variables.
    ("$$this", (3, 4)),
    ("$$value", (3, 4)),
];

/// `$$` names that are the crate's own `$let`/`$map`/`$filter` variables.
const NOT_OPERATORS: &[&str] = &["$$e", "$$free", "$$h", "$$live", "$$now", "$$q", "$$tick"];

/// What each supported version lacks, of what a change to the queries
/// might reach for: the operator, the first version that has it, and the
/// manual's page. Known differences of the test server are listed too.
const LACKS: &[(&str, (u32, u32), &str)] = &[
    (
        "$dateAdd",
        (5, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/dateAdd/",
    ),
    (
        "$dateDiff",
        (5, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/dateDiff/",
    ),
    (
        "$getField",
        (5, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/getField/",
    ),
    (
        "$setField",
        (5, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/setField/",
    ),
    (
        "$unsetField",
        (5, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/unsetField/",
    ),
    (
        "$tsIncrement",
        (5, 1),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/tsIncrement/",
    ),
    (
        "$sortArray",
        (5, 2),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/sortArray/",
    ),
    (
        "$firstN",
        (5, 2),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/firstN-array-element/",
    ),
    (
        "$lastN",
        (5, 2),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/lastN-array-element/",
    ),
    (
        "$maxN",
        (5, 2),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/maxN-array-element/",
    ),
    (
        "$minN",
        (5, 2),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/minN-array-element/",
    ),
    (
        "$bitAnd",
        (6, 3),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/bitAnd/",
    ),
    (
        "$median",
        (7, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/median/",
    ),
    (
        "$percentile",
        (7, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/percentile/",
    ),
    (
        "$$USER_ROLES",
        (7, 0),
        "https://www.mongodb.com/docs/manual/reference/aggregation-variables/",
    ),
    (
        "$toUUID",
        (8, 0),
        "https://www.mongodb.com/docs/manual/reference/operator/aggregation/toUUID/",
    ),
];

/// The supported server versions.
const VERSIONS: &[(u32, u32)] = &[(4, 4), (5, 0), (6, 0), (7, 0), (8, 0)];

/// Every `"$name"` / `"$$NAME"` literal in `text`, outside comments and
/// after the first `#[cfg(test)]` (the crate keeps its test modules last).
fn sent_names(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("\"$") {
            let after = &rest[at + 1..];
            let dollars = after.chars().take_while(|c| *c == '$').count();
            let name_len = after[dollars..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .count();
            if name_len > 0 {
                names.insert(after[..dollars + name_len].to_owned());
            }
            rest = &after[dollars..];
        }
    }
    names
}

fn runtime_sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            runtime_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn every_operator_the_crate_sends_is_listed_and_exists_on_every_supported_server() {
    let mut sources = Vec::new();
    runtime_sources(
        &mongolock_suite::workspace_root().join("mongolock/src"),
        &mut sources,
    );
    assert!(sources.len() > 10, "the runtime's sources were not found");
    let mut unlisted = Vec::new();
    let mut too_new = Vec::new();
    let mut seen = BTreeSet::new();
    for (file, text) in &sources {
        for name in sent_names(text) {
            seen.insert(name.clone());
            if NOT_OPERATORS.contains(&name.as_str()) {
                continue;
            }
            if let Some((_, since, page)) = LACKS.iter().find(|(n, ..)| *n == name) {
                too_new.push(format!("{name} in {file}: needs {since:?}, see {page}"));
                continue;
            }
            match SENT.iter().find(|(n, _)| *n == name) {
                Some((_, since)) if *since > FLOOR => {
                    too_new.push(format!("{name} in {file}: needs {since:?}"));
                }
                Some(_) => {}
                None => unlisted.push(format!("{name} in {file}")),
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "operators sent but not listed in SENT (add each with the server version that introduced it): {unlisted:#?}"
    );
    assert!(
        too_new.is_empty(),
        "operators some supported server lacks: {too_new:#?}"
    );
    // The lists stay true: nothing listed that the crate no longer sends.
    let stale: Vec<_> = SENT
        .iter()
        .map(|(n, _)| *n)
        .chain(NOT_OPERATORS.iter().copied())
        .filter(|n| !seen.contains(*n))
        .collect();
    assert!(stale.is_empty(), "listed but no longer sent: {stale:?}");
    // Each supported version has what the crate sends.
    for version in VERSIONS {
        for (name, since) in SENT {
            assert!(since <= version, "{name} is missing on {version:?}");
        }
    }
}

#[test]
fn the_scan_finds_operators_and_skips_comments_and_tests() {
    let text = r#"
        let a = doc! { "$set": { "x": { "$$NOW": 1 } } }; // "$dateAdd" in a comment
        let b = format!("${FIELD}");
        #[cfg(test)]
        mod tests { fn t() { doc! { "$where": 1 }; } }
    "#;
    let names: Vec<_> = sent_names(text).into_iter().collect();
    assert_eq!(names, ["$$NOW", "$set"]);
}
