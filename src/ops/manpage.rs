//! The man pages of `bgd` and `bgctl`: clap_mangen renders the name,
//! synopsis, description, options and subcommands from each binary's clap
//! definition (so they never disagree with `--help`), and each binary adds
//! the sections clap has no place for, such as its exit codes.

use std::io::{self, Write};

use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

/// A section after the options: a paragraph, then one tagged paragraph per
/// item (`EXIT STATUS` with `0`, `1`, ...).
pub struct Section {
    pub title: &'static str,
    pub intro: &'static str,
    pub items: Vec<(String, String)>,
}

impl Section {
    pub fn new(title: &'static str, intro: &'static str, items: &[(&str, &str)]) -> Section {
        Section {
            title,
            intro,
            items: items
                .iter()
                .map(|(tag, text)| (tag.to_string(), text.to_string()))
                .collect(),
        }
    }

    /// bgctl's EXIT STATUS, from the one table (`ops::exit`).
    pub fn bgctl_exit_status() -> Section {
        Section {
            title: "EXIT STATUS",
            intro: "",
            items: crate::ops::exit::Code::ALL
                .iter()
                .map(|c| (c.number().to_string(), c.meaning().to_string()))
                .collect(),
        }
    }
}

/// Writes `cmd`'s man page (section 1, roff) with `sections` after its
/// options and subcommands.
pub fn render(mut cmd: clap::Command, sections: &[Section], out: &mut dyn Write) -> io::Result<()> {
    cmd.build();
    let man = Man::new(cmd.clone()).manual("bgd manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut roff = Roff::default();
    subcommands(&mut roff, &cmd);
    for s in sections {
        roff.control("SH", [s.title]);
        if !s.intro.is_empty() {
            roff.text([roman(s.intro)]);
        }
        for (tag, text) in &s.items {
            roff.control("TP", []);
            roff.text([bold(tag.as_str())]);
            roff.text([roman(text.as_str())]);
        }
    }
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// One entry per subcommand, with its arguments, on this page (clap_mangen
/// would refer to a page per subcommand, which bgd does not ship).
fn subcommands(roff: &mut Roff, cmd: &clap::Command) {
    let subs: Vec<_> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        return;
    }
    roff.control("SH", ["COMMANDS"]);
    for sub in subs {
        let args: Vec<_> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help")
            .collect();
        let mut usage = vec![bold(format!("{} {}", cmd.get_name(), sub.get_name()))];
        for arg in &args {
            usage.push(roman(" "));
            if arg.is_positional() {
                usage.extend(arg_usage(arg, false));
            } else {
                usage.push(roman("["));
                usage.extend(arg_usage(arg, false));
                usage.push(roman("]"));
            }
        }
        roff.control("TP", []);
        roff.text(usage);
        if let Some(about) = sub.get_about() {
            roff.text([roman(about.to_string())]);
        }
        if args.iter().any(|a| a.get_help().is_some()) {
            roff.control("RS", []);
            for arg in args.iter().filter(|a| a.get_help().is_some()) {
                roff.control("TP", []);
                roff.text(arg_usage(arg, true));
                let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                if let Some(default) = arg.get_default_values().first().filter(|_| takes_value) {
                    help = format!("{help} (default {})", default.to_string_lossy());
                }
                roff.text([roman(help)]);
            }
            roff.control("RE", []);
        }
    }
}

/// `DIR`, `pause|resume`, `--label LABEL`, `--no-wait`; with `short`, also
/// the short flag: `-n, --lines LINES`.
fn arg_usage(arg: &clap::Arg, short: bool) -> Vec<Inline> {
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    let value = if !choices.is_empty() {
        roman(choices.join("|"))
    } else {
        let names = arg.get_value_names().map(|v| v.join(" "));
        italic(names.unwrap_or_else(|| arg.get_id().as_str().to_uppercase()))
    };
    if arg.is_positional() {
        return vec![value];
    }
    let flag = match (arg.get_short().filter(|_| short), arg.get_long()) {
        (Some(short), Some(long)) => format!("-{short}, --{long}"),
        (None, Some(long)) => format!("--{long}"),
        (Some(short), None) => format!("-{short}"),
        (None, None) => String::new(),
    };
    let mut out = vec![bold(flag)];
    if arg.get_num_args().is_some_and(|n| n.takes_values()) {
        out.push(roman(" "));
        out.push(value);
    }
    out
}
