//! The README's configuration table checked against the command line.

use super::Cli;

/// The README's configuration table lists exactly the server's flags, each with its
/// environment twin and (where the table shows a literal) its default.
#[test]
fn readme_configuration_table_matches_the_flags() {
    use clap::CommandFactory;
    let readme = include_str!("../../../../README.md");
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            l.split(" | ")
                .map(|c| c.trim_matches(|ch| ch == '|' || ch == ' '))
                .collect()
        })
        .collect();
    let cmd = Cli::command();
    let flags: Vec<_> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
        .collect();
    for arg in &flags {
        let long = format!("`--{}`", arg.get_long().unwrap_or_default());
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&long.as_str()))
            .unwrap_or_else(|| panic!("{long} is missing from the README's configuration table"));
        let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy()));
        assert_eq!(
            row.get(1).map(|s| s.to_string()),
            env,
            "environment twin of {long}"
        );
        if let (Some(default), Some(shown)) = (arg.get_default_values().first(), row.get(2)) {
            let default = default.to_string_lossy();
            if shown.starts_with('`') && !default.is_empty() {
                assert_eq!(*shown, format!("`{default}`"), "default of {long}");
            }
        }
    }
    for row in &rows {
        let name = row[0].trim_matches('`').trim_start_matches("--");
        assert!(
            flags.iter().any(|a| a.get_long() == Some(name)),
            "the README documents --{name}, which is no flag"
        );
    }
}
