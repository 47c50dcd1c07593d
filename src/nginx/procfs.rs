//! Parsers for the few `/proc` files we read, and the pid file.
//!
//! Everything here takes bytes that another process controls (its title, its
//! pid file), so the parsers are total: they return an error, never panic.
//! They are kept free of I/O so that they can be tested and fuzzed directly.

/// The fields of `/proc/PID/stat` that identify a process and its place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `comm`, the kernel's 15-byte name (not the title nginx sets).
    pub comm: String,
    /// One of `R S D Z T t X I ...`; `Z` is a zombie (exited, not yet reaped).
    pub state: char,
    pub ppid: i32,
    /// Field 22: start time in clock ticks since boot. Together with the pid
    /// it names one process for the machine's uptime: a recycled pid gets a
    /// later start time.
    pub start_ticks: u64,
    /// Field 52 (Linux 3.5+): the exit status as `waitpid` reports it, for
    /// a zombie; 0 while the process runs, and 0 too for a reader the
    /// kernel does not let trace it. `None` when the field is missing.
    pub exit_code: Option<i32>,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Why a /proc file or pid file was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Parses `/proc/PID/stat`. `comm` may contain spaces and parentheses, so the
/// name ends at the *last* `)`.
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let open = text
        .find('(')
        .ok_or_else(|| ParseError("stat: no '(' before comm".into()))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| ParseError("stat: no ')' after comm".into()))?;
    if close < open {
        return Err(ParseError("stat: ')' before '('".into()));
    }
    let pid = text[..open]
        .trim()
        .parse::<i32>()
        .map_err(|_| ParseError("stat: pid is not a number".into()))?;
    let comm = text[open + 1..close].to_string();
    // Fields after comm, starting with field 3 (state).
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| ParseError(format!("stat: missing field {n}")))
    };
    let state = field(3)?
        .chars()
        .next()
        .ok_or_else(|| ParseError("stat: empty state".into()))?;
    let ppid = field(4)?
        .parse::<i32>()
        .map_err(|_| ParseError("stat: ppid is not a number".into()))?;
    let start_ticks = field(22)?
        .parse::<u64>()
        .map_err(|_| ParseError("stat: starttime is not a number".into()))?;
    let exit_code = rest.get(52 - 3).and_then(|v| v.parse::<i32>().ok());
    Ok(Stat {
        pid,
        comm,
        state,
        ppid,
        start_ticks,
        exit_code,
    })
}

/// Turns `/proc/PID/cmdline` into the process title as `ps` shows it.
///
/// nginx overwrites its argv area with its title and pads it with NULs, so
/// the raw bytes look like `nginx: worker process\0\0\0...`. Ordinary
/// programs have NUL-separated arguments. Both become one space-joined line.
/// A zombie or kernel thread has an empty cmdline: that gives `""`.
pub fn parse_cmdline(raw: &[u8]) -> String {
    let mut out = String::new();
    for part in raw.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&String::from_utf8_lossy(part));
    }
    out.trim().to_string()
}

/// Parses the content of an nginx pid file: a positive decimal pid,
/// optionally surrounded by whitespace (nginx writes `"1234\n"`).
pub fn parse_pid_file(text: &str) -> Result<i32, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError("the pid file is empty".into()));
    }
    match t.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => {
            let shown: String = t.chars().take(40).collect();
            Err(ParseError(format!(
                "the pid file does not hold a positive pid (it holds {shown:?})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX_STAT: &str = "2270 (nginx) S 2266 2266 1055 0 -1 4194560 423 0 0 0 0 0 0 0 20 0 1 0 12500 10502144 1670 18446744073709551615 9438 0";

    #[test]
    fn stat_of_a_real_nginx_master() {
        let s = parse_stat(NGINX_STAT).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 2270,
                comm: "nginx".into(),
                state: 'S',
                ppid: 2266,
                start_ticks: 12500,
                exit_code: None,
            }
        );
        assert!(!s.is_zombie());
    }

    /// A zombie's exit status (field 52): killed by SIGKILL is 9.
    #[test]
    fn the_exit_status_of_a_zombie() {
        let fields: Vec<String> = (3..=52)
            .map(|n| match n {
                3 => "Z".to_string(),
                22 => "99".to_string(),
                52 => "9".to_string(),
                _ => "0".to_string(),
            })
            .collect();
        let s = parse_stat(&format!("7 (nginx) {}", fields.join(" "))).unwrap();
        assert!(s.is_zombie());
        assert_eq!(s.exit_code, Some(9));
        assert_eq!(s.start_ticks, 99);
    }

    #[test]
    fn stat_comm_with_parens_and_spaces() {
        let s = parse_stat("7 (a) b (c) Z 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0").unwrap();
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(s.start_ticks, 99);
        assert!(s.is_zombie());
    }

    #[test]
    fn stat_rejects_truncated_and_garbage() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (x) S 1").is_err());
        assert!(parse_stat(") 12 (").is_err());
        assert!(parse_stat("x (nginx) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0").is_err());
    }

    #[test]
    fn cmdline_titles() {
        assert_eq!(
            parse_cmdline(b"nginx: worker process\0\0\0\0"),
            "nginx: worker process"
        );
        assert_eq!(parse_cmdline(b"sleep\x00100\x00"), "sleep 100");
        assert_eq!(parse_cmdline(b""), "");
    }

    #[test]
    fn pid_file_contents() {
        assert_eq!(parse_pid_file("1234\n"), Ok(1234));
        assert!(parse_pid_file("").unwrap_err().0.contains("empty"));
        assert!(parse_pid_file("0").is_err());
        assert!(parse_pid_file("-5").is_err());
        assert!(parse_pid_file("12 13").is_err());
        assert!(parse_pid_file("abc").unwrap_err().0.contains("\"abc\""));
    }
}

/// The real UID from `/proc/PID/status` (`Uid:\treal\teffective\t...`), used
/// to tell the operator which user the sidecar must run as.
pub fn parse_status_uid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

#[cfg(test)]
mod status_tests {
    #[test]
    fn uid_line() {
        assert_eq!(
            super::parse_status_uid("Name:\tnginx\nUid:\t101\t101\t101\t101\n"),
            Some(101)
        );
        assert_eq!(super::parse_status_uid("Name:\tx\n"), None);
    }
}
