//! The operator's operations commands through the real binary: `admin announce`, `admin maintenance
//! list|schedule|update|cancel`, `admin recipients list|add|remove` and `admin deliveries`, against a server
//! that mails announcements to a small SMTP sink on loopback.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Server, run_cli};
use serde_json::Value;

/// Accepts SMTP sessions on loopback and keeps each message's recipients; speaks just enough SMTP for lettre.
fn smtp_sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let inbox = Arc::clone(&received);
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            let inbox = Arc::clone(&inbox);
            std::thread::spawn(move || {
                let mut write = socket.try_clone().expect("clone socket");
                let mut lines = BufReader::new(socket).lines();
                let _ = write.write_all(b"220 sink ready\r\n");
                while let Some(Ok(line)) = lines.next() {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("RCPT TO") {
                        inbox
                            .lock()
                            .expect("lock")
                            .push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                        b"250 ok\r\n"
                    } else if upper == "DATA" {
                        let _ = write.write_all(b"354 go ahead\r\n");
                        for data in lines.by_ref() {
                            if data.map_or(true, |d| d == ".") {
                                break;
                            }
                        }
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

fn admin(server: &Server, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.arg("admin").args(args).arg("--server").arg(server.url());
    let cwd = tempfile::tempdir().expect("scratch dir");
    command.current_dir(cwd.path());
    if let Some(token) = token {
        command.env("ESGF_EVENTS_TOKEN", token);
    }
    run_cli(command, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The stdout of an operator command that must succeed.
fn ok(server: &Server, args: &[&str]) -> String {
    let output = admin(server, Some(server.operator_token()), args);
    assert!(
        output.status.success(),
        "admin {args:?} failed:\nstdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The stderr of an operator command that must fail.
fn fails(server: &Server, args: &[&str]) -> String {
    let output = admin(server, Some(server.operator_token()), args);
    assert!(!output.status.success(), "admin {args:?} should fail; stdout: {}", text(&output.stdout));
    text(&output.stderr)
}

fn in_days(days: i64, hours: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days) + chrono::Duration::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn operators_announce_schedule_maintenance_and_manage_the_mailing_list_from_the_command_line() {
    let (smtp_url, inbox) = smtp_sink();
    let server = Server::start_with_env(&[
        ("ESGF_EVENTS_SMTP_URL", &smtp_url),
        ("ESGF_EVENTS_ANNOUNCE_TO", "list@example.org"),
        ("ESGF_EVENTS_OPS_MAIL_FROM", "events@example.org"),
        ("ESGF_EVENTS_OPS_PUBLIC_URL", "https://events.example.org"),
    ]);

    // The list: a member joins (once), the configured address is there already.
    let added = ok(&server, &["recipients", "add", "centre@example.org", "--name", "Centre A"]);
    assert_eq!(added.trim(), "added centre@example.org to the announcement list");
    let again = ok(&server, &["recipients", "add", "Centre@Example.org"]);
    assert_eq!(again.trim(), "centre@example.org already is a member of the announcement list");
    let invalid = fails(&server, &["recipients", "add", "not-an-address"]);
    assert!(invalid.contains("not an e-mail address"), "{invalid}");
    let listed = ok(&server, &["recipients", "list"]);
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["ADDRESS", "NAME", "SOURCES", "STATE"]);
    assert_eq!(rows[1], ["list@example.org", "-", "configured", "subscribed"]);
    assert_eq!(rows[2], ["centre@example.org", "Centre", "A", "member", "subscribed"]);

    // An announcement, mailed to both.
    let published = ok(
        &server,
        &["announce", "--kind", "planned-downtime", "--title", "Disk swap", "--body", "Writes pause."],
    );
    assert_eq!(published.trim(), "published announcement 1 (planned-downtime): Disk swap");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json: Value = serde_json::from_str(&ok(&server, &["deliveries", "--json"])).expect("JSON");
        let sent = json["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .filter(|d| d["announcement"] == "1" && d["status"] == "sent")
            .count();
        if sent == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "announcement 1 not mailed: {json}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deliveries = ok(&server, &["deliveries"]);
    assert!(deliveries.lines().next().is_some_and(|h| h.starts_with("ANNOUNCEMENT")), "{deliveries}");
    assert!(
        deliveries.lines().any(
            |l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["1", "centre@example.org", "sent", "1"]
        ),
        "{deliveries}"
    );
    let mut mailed = inbox.lock().expect("lock").clone();
    mailed.sort();
    assert_eq!(mailed, ["centre@example.org", "list@example.org"]);

    // Maintenance: announced with notice, or forced.
    let (start, end) = (in_days(8, 0), in_days(8, 1));
    let scheduled = ok(
        &server,
        &[
            "maintenance",
            "schedule",
            "--starts-at",
            &start,
            "--ends-at",
            &end,
            "--mode",
            "read-only",
            "--message",
            "disk swap",
            "--announcement",
            "1",
        ],
    );
    let id = scheduled
        .strip_prefix("scheduled maintenance window ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("unexpected output: {scheduled}"))
        .to_owned();
    let (soon, soon_end) = (in_days(1, 0), in_days(1, 1));
    let emergency = [
        "maintenance",
        "schedule",
        "--starts-at",
        &soon,
        "--ends-at",
        &soon_end,
        "--mode",
        "full",
        "--message",
        "emergency",
    ];
    let refused = fails(&server, &emergency);
    assert!(refused.to_lowercase().contains("announce"), "{refused}");
    let forced = ok(&server, &[&emergency[..], &["--force"]].concat());
    assert!(forced.contains("forced"), "{forced}");

    let listed = ok(&server, &["maintenance", "list"]);
    assert!(listed.starts_with("ID"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("read-only") && l.contains("disk swap")));
    assert!(listed.lines().any(|l| l.contains("full") && l.contains("forced") && l.contains("emergency")));

    let changed =
        ok(&server, &["maintenance", "update", &id, "--message", "disk swap, both racks", "--json"]);
    let changed: Value = serde_json::from_str(&changed).expect("JSON");
    assert_eq!(changed["message"], "disk swap, both racks");
    let nothing = fails(&server, &["maintenance", "update", &id]);
    assert!(nothing.contains("nothing to change"), "{nothing}");
    let cancelled = ok(&server, &["maintenance", "cancel", &id]);
    assert_eq!(cancelled.trim(), format!("cancelled maintenance window {id}"));
    let listed: Value = serde_json::from_str(&ok(&server, &["maintenance", "list", "--json"])).expect("JSON");
    assert!(
        listed["windows"].as_array().expect("windows").iter().all(|w| w["id"] != id.as_str()),
        "{listed}"
    );
    let gone = fails(&server, &["maintenance", "cancel", &id]);
    assert!(gone.contains("not found"), "{gone}");

    // Removing the member; removing it again names the problem.
    let removed = ok(&server, &["recipients", "remove", "centre@example.org"]);
    assert_eq!(removed.trim(), "removed centre@example.org from the announcement list");
    let absent = fails(&server, &["recipients", "remove", "centre@example.org"]);
    assert!(absent.contains("Not a member of the announcement list"), "{absent}");
    let listed: Value = serde_json::from_str(&ok(&server, &["recipients", "list", "--json"])).expect("JSON");
    assert_eq!(listed["recipients"].as_array().expect("recipients").len(), 1, "{listed}");

    // Operations need the operator.
    let anonymous = admin(&server, None, &["announce", "--kind", "general", "--title", "x"]);
    assert!(!anonymous.status.success());
    assert!(text(&anonymous.stderr).contains("Authentication required"), "{}", text(&anonymous.stderr));
}
