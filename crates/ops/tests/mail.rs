//! Announcement mail against an SMTP sink on loopback (in-process, speaking just enough SMTP): each
//! announcement reaches each recipient once, a sink refusing the first attempts still ends in delivery, and a
//! restarted mailer sends nothing again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use esgf_events_engine::ManualClock;
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_ops::announcements::{AnnouncementKind, Announcements, NewAnnouncement};
use esgf_events_ops::mail::{MailConfig, Mailer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const NOW_MS: i64 = 1_764_547_200_000;

/// What the sink received: (recipients, message text).
type Inbox = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// Accepts SMTP sessions; answers the first `refuse` MAIL commands with a transient 451.
async fn sink(refuse: usize) -> (String, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let inbox: Inbox = Arc::default();
    let refusals = Arc::new(Mutex::new(refuse));
    let received = Arc::clone(&inbox);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (received, refusals) = (Arc::clone(&received), Arc::clone(&refusals));
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ready\r\n").await;
                let mut rcpts = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 sink\r\n"
                    } else if upper.starts_with("MAIL FROM") {
                        let mut left = refusals.lock().expect("lock");
                        if *left > 0 {
                            *left -= 1;
                            b"451 4.3.0 try again later\r\n"
                        } else {
                            rcpts.clear();
                            b"250 ok\r\n"
                        }
                    } else if upper.starts_with("RCPT TO") {
                        rcpts.push(line[8..].trim().trim_start_matches(':').trim().to_owned());
                        b"250 ok\r\n"
                    } else if upper == "DATA" {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut text = String::new();
                        while let Ok(Some(data)) = lines.next_line().await {
                            if data == "." {
                                break;
                            }
                            text.push_str(&data);
                            text.push('\n');
                        }
                        received.lock().expect("lock").push((std::mem::take(&mut rcpts), text));
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, inbox)
}

fn mailer(
    url: &str,
    meta: &Arc<dyn MetaStore>,
    announcements: &Arc<Announcements>,
    clock: &Arc<ManualClock>,
) -> Mailer {
    let mut config = MailConfig::new(
        url.to_owned(),
        "ESGF Events <events@example.org>".to_owned(),
        vec!["list@example.org".to_owned(), "centre@example.org".to_owned()],
    );
    config.retry_base = Duration::from_millis(10);
    config.retry_cap = Duration::from_millis(40);
    config.timeout = Duration::from_secs(10);
    config.public_url = Some("https://events.example.org".to_owned());
    // A registered contact, and a configured address again in other case: mailed once.
    let contacts = Arc::new(|| vec!["indexer@example.org".to_owned(), "LIST@example.org".to_owned()]);
    Mailer::new(config, Arc::clone(meta), Arc::clone(announcements), contacts, clock.clone()).expect("mailer")
}

/// Runs passes, moving the clock to each retry, until nothing is pending (bounded).
async fn drain(mailer: &Mailer, clock: &ManualClock) {
    for _ in 0..50 {
        match mailer.pass().await.expect("pass") {
            None => return,
            Some(wait) => clock.advance_ms(i64::try_from(wait.as_millis()).expect("ms") + 1),
        }
    }
    panic!("deliveries still pending after 50 passes");
}

#[tokio::test]
async fn each_announcement_reaches_each_recipient_once_despite_refusals_and_restarts() {
    let (url, inbox) = sink(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("s.redb")).expect("meta"));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
    announcements
        .publish(NewAnnouncement {
            kind: AnnouncementKind::PlannedDowntime,
            title: "Storage migration on 12 December".to_owned(),
            body: "Publishing pauses for two hours.".to_owned(),
            window: None,
            topic: None,
        })
        .await
        .expect("publish");

    let first = mailer(&url, &meta, &announcements, &clock);
    drain(&first, &clock).await;
    {
        let inbox = inbox.lock().expect("lock");
        let mut recipients: Vec<String> = inbox.iter().flat_map(|(r, _)| r.clone()).collect();
        recipients.sort();
        assert_eq!(recipients, ["<centre@example.org>", "<indexer@example.org>", "<list@example.org>"]);
        for (_, text) in inbox.iter() {
            // Long header lines arrive folded (RFC 5322 section 2.2.3).
            let text = text.replace("\n ", " ");
            assert!(
                text.contains(
                    "Subject: [ESGF Event Service] planned-downtime: Storage migration on 12 December"
                ),
                "{text}"
            );
            assert!(text.contains("Publishing pauses for two hours."), "{text}");
            assert!(text.contains("https://events.example.org/announcements#announcement-1"), "{text}");
        }
    }
    let deliveries = first.deliveries().await.expect("deliveries");
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries.iter().all(|d| d.status == "sent"), "{deliveries:#?}");
    assert_eq!(deliveries.iter().map(|d| d.attempts).sum::<u32>(), 5, "two refused attempts were retried");

    // A restart (a new mailer over the same state) sends nothing again; a new announcement goes out once.
    drop(first);
    let second = mailer(&url, &meta, &announcements, &clock);
    drain(&second, &clock).await;
    assert_eq!(inbox.lock().expect("lock").len(), 3);
    announcements
        .publish(NewAnnouncement {
            kind: AnnouncementKind::Restored,
            title: "Service restored".to_owned(),
            body: String::new(),
            window: None,
            topic: None,
        })
        .await
        .expect("publish");
    drain(&second, &clock).await;
    assert_eq!(inbox.lock().expect("lock").len(), 6);
}

#[tokio::test]
async fn announcements_older_than_max_age_when_first_seen_are_not_mailed() {
    let (url, inbox) = sink(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("s.redb")).expect("meta"));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
    announcements
        .publish(NewAnnouncement {
            kind: AnnouncementKind::General,
            title: "Old news".to_owned(),
            body: String::new(),
            window: None,
            topic: None,
        })
        .await
        .expect("publish");
    clock.advance_ms(30 * 86_400_000);
    let m = mailer(&url, &meta, &announcements, &clock);
    drain(&m, &clock).await;
    assert!(inbox.lock().expect("lock").is_empty());
    assert!(m.deliveries().await.expect("deliveries").is_empty());
}

/// The `List-Unsubscribe` URL of a received message (header lines unfolded).
fn unsubscribe_link(text: &str) -> String {
    let unfolded = text.replace("\n ", " ");
    let line = unfolded
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe:"))
        .unwrap_or_else(|| panic!("no List-Unsubscribe header in {text}"));
    line.trim().trim_start_matches('<').trim_end_matches('>').to_owned()
}

async fn publish(announcements: &Announcements, title: &str) {
    announcements
        .publish(NewAnnouncement {
            kind: AnnouncementKind::General,
            title: title.to_owned(),
            body: String::new(),
            window: None,
            topic: None,
        })
        .await
        .expect("publish");
}

/// Recipients of every message received after the first `skip`, sorted.
fn recipients_after(inbox: &Inbox, skip: usize) -> Vec<String> {
    let mut out: Vec<String> =
        inbox.lock().expect("lock").iter().skip(skip).flat_map(|(r, _)| r.clone()).collect();
    out.sort();
    out
}

#[tokio::test]
async fn each_mail_carries_its_own_one_click_link_and_who_unsubscribes_gets_no_more() {
    let (url, inbox) = sink(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("s.redb")).expect("meta"));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
    publish(&announcements, "First").await;
    let m = mailer(&url, &meta, &announcements, &clock);
    drain(&m, &clock).await;

    let mut list_sig = None;
    let received = inbox.lock().expect("lock").clone();
    for (rcpts, text) in &received {
        let address = rcpts[0].trim_matches(['<', '>']);
        let link = unsubscribe_link(text);
        let prefix = format!(
            "https://events.example.org/v1/announcements/unsubscribe?address={}&sig=",
            address.replace('@', "%40")
        );
        assert!(link.starts_with(&prefix), "{link} is not {address}'s link");
        assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{text}");
        assert!(text.contains(&link), "the body carries the link too: {text}");
        let sig = link.rsplit_once("sig=").expect("sig").1.to_owned();
        m.list().verify(address, &sig).await.expect("the link verifies");
        if address == "list@example.org" {
            list_sig = Some(sig);
        }
    }
    let list_sig = list_sig.expect("list@example.org got mail");

    // A configured address unsubscribes, a member joins: the next announcement follows the list.
    m.list().unsubscribe("list@example.org", &list_sig).await.expect("unsubscribe");
    m.list().add("new@example.org", None).await.expect("add member");
    publish(&announcements, "Second").await;
    drain(&m, &clock).await;
    assert_eq!(
        recipients_after(&inbox, 3),
        ["<centre@example.org>", "<indexer@example.org>", "<new@example.org>"]
    );

    // Unsubscribing between fan-out and a retry drops the pending mail instead of sending it.
    let (refusing, _) = sink(usize::MAX).await;
    publish(&announcements, "Third").await;
    let failing = mailer(&refusing, &meta, &announcements, &clock);
    assert!(failing.pass().await.expect("pass").is_some(), "every delivery waits for a retry");
    let centre_sig = {
        let link = m.list().unsubscribe_url("https://x", "centre@example.org").await.expect("url");
        link.rsplit_once("sig=").expect("sig").1.to_owned()
    };
    m.list().unsubscribe("centre@example.org", &centre_sig).await.expect("unsubscribe");
    drain(&m, &clock).await;
    assert_eq!(recipients_after(&inbox, 6), ["<indexer@example.org>", "<new@example.org>"]);
    let third: Vec<(String, String)> = m
        .deliveries()
        .await
        .expect("deliveries")
        .into_iter()
        .filter(|d| d.announcement == "3")
        .map(|d| (d.recipient, d.status))
        .collect();
    assert!(third.contains(&("centre@example.org".to_owned(), "unsubscribed".to_owned())), "{third:?}");
}

#[tokio::test]
async fn without_a_public_url_mail_goes_out_without_an_unsubscribe_header() {
    let (url, inbox) = sink(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("s.redb")).expect("meta"));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
    publish(&announcements, "No link").await;
    let config = MailConfig::new(url, "events@example.org".to_owned(), vec!["list@example.org".to_owned()]);
    let m =
        Mailer::new(config, Arc::clone(&meta), Arc::clone(&announcements), Arc::new(Vec::new), clock.clone())
            .expect("mailer");
    drain(&m, &clock).await;
    let inbox = inbox.lock().expect("lock");
    assert_eq!(inbox.len(), 1);
    assert!(!inbox[0].1.contains("List-Unsubscribe"), "{}", inbox[0].1);
}

#[tokio::test]
async fn announcements_already_mailed_by_the_monitor_are_not_mailed_again() {
    let (url, inbox) = sink(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("s.redb")).expect("meta"));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
    let new = |kind, title: &str| NewAnnouncement {
        kind,
        title: title.to_owned(),
        body: String::new(),
        window: None,
        topic: None,
    };
    let down = announcements
        .publish_mailed(
            new(AnnouncementKind::UnplannedDowntime, "Down since noon"),
            Some("monitor".to_owned()),
        )
        .await
        .expect("publish");
    assert_eq!(down.mailed_by.as_deref(), Some("monitor"));
    announcements.publish(new(AnnouncementKind::Restored, "Back again")).await.expect("publish");
    let m = mailer(&url, &meta, &announcements, &clock);
    drain(&m, &clock).await;
    let texts: Vec<String> = inbox.lock().expect("lock").iter().map(|(_, t)| t.clone()).collect();
    assert!(!texts.is_empty() && texts.iter().all(|t| t.contains("Back again")), "{texts:?}");
    let deliveries = m.deliveries().await.expect("deliveries");
    assert!(deliveries.iter().all(|d| d.announcement != down.id), "{deliveries:?}");
}
