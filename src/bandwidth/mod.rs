//! Bandwidth limits of the sites (DESIGN sections 6 and 7): the limit's syntax ([`Bandwidth`]),
//! the per-site limiter the replication processor's bodies pass through ([`Limiter`],
//! [`limit`]), and the registry the API changes at run time ([`Bandwidths`]).
//!
//! **Syntax** (`[[sites]] bandwidth`, `POST crr/bandwidth/<site>`):
//! - `"off"`: no limit (the default);
//! - a rate, `<number><unit>[/s]`: units `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), and
//!   rclone's `K` (or `k`), `M`, `G`, `T` for the same; decimals allowed (`1.5MiB/s`). A unit is
//!   required (rclone reads a bare number as KiB/s: write `512KiB/s`), and `kB`, `MB`, `GB`, `TB`
//!   are refused as ambiguous (10^6 or 2^20?). At least 1 KiB/s;
//! - an rclone-style timetable: entries `HH:MM,<rate or off>` separated by spaces, each in force
//!   from its time (host local time) until the next entry's, the last one wrapping round to the
//!   first (`"08:00,10MiB/s 19:00,off"`: 10 MiB/s from 08:00 to 19:00, none overnight). An entry
//!   may name a day (`Mon-08:00,10MiB/s`; `Mon` ... `Sun`): then it starts on that day only,
//!   while an entry without a day starts every day.
//!
//! **Limiter.** Each site has one [`Limiter`], shared by all its copies (single PUTs and
//! multipart parts alike): a token bucket refilled at the rate in force, holding at most a tenth
//! of a second of bytes (at least one piece). [`limit`] wraps a body so that it is handed to the
//! site in pieces of at most [`PIECE_MAX`] bytes (less at low rates, so a piece lasts at most
//! 1/16 s), each of which waits for its tokens. Waiters are served one piece at a time, in the
//! order they asked (a FIFO lock): a large copy and a small one interleave piece by piece, so
//! small objects keep flowing behind a large one instead of waiting for it to end. A change of
//! the limit (API, timetable) applies to the next piece; a piece already waiting is woken by an
//! API change, and re-reads a timetable at least every second.
//!
//! **Run-time changes** are stored like pause state: `POST crr/bandwidth/<site>` writes the limit
//! to the state store (the named cursor `bandwidth:crr:<site>`, as [`Bandwidth`]'s text) before
//! it answers, and a stored limit wins over the configured one, also after a restart, until it is
//! changed again or removed (`DELETE crr/bandwidth/<site>`, which stores an empty value: the
//! configured limit applies again). Every process reads the stored limits every
//! [`SYNC_TICK`] ([`run_sync`]), so with a store shared by several processes (MongoDB) a change
//! made through one process's API reaches the others. Each process limits its own copies: N
//! processes replicating to one site move up to N times its limit.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{Datelike, Timelike};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::ByteStream;

pub mod schedule;

use crate::store::{StateStore, StoreError, StoreOp};
#[cfg(test)]
use schedule::WEEK_MINUTES;
pub use schedule::{rate_text, Bandwidth, ParseError, Slot, MAX_RATE, MIN_RATE};

/// Largest piece a body is cut into before it waits for its tokens.
pub const PIECE_MAX: usize = 64 * 1024;
/// Smallest piece (at the lowest rates).
const PIECE_MIN: usize = 1024;
/// Longest a waiting piece sleeps before it reads the limit again (a timetable's switch).
const RECHECK: Duration = Duration::from_secs(1);
/// How often [`run_sync`] reads the stored limits.
pub const SYNC_TICK: Duration = Duration::from_secs(1);

/// The time of the week a timetable reads.
pub trait WeekClock: Send + Sync + 'static {
    /// Minutes since Monday 00:00, host local time (0..10080).
    fn minute_of_week(&self) -> u32;
}

/// The host's local time (its time zone: `TZ`, else `/etc/localtime`), read at most once a
/// second.
#[derive(Debug, Default)]
pub struct LocalWeekClock {
    cache: Mutex<Option<(std::time::Instant, u32)>>,
}

impl WeekClock for LocalWeekClock {
    fn minute_of_week(&self) -> u32 {
        let mut cache = self.cache.lock();
        if let Some((at, m)) = *cache {
            if at.elapsed() < Duration::from_secs(1) {
                return m;
            }
        }
        let now = chrono::Local::now();
        let m = now.weekday().num_days_from_monday() * 1440 + now.hour() * 60 + now.minute();
        *cache = Some((std::time::Instant::now(), m));
        m
    }
}

/// Token-bucket arithmetic (pure, so it is tested without waiting).
#[derive(Debug)]
struct Bucket {
    /// Bytes that may pass now; negative = owed by the last piece granted.
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` = never (full).
    last: Option<Instant>,
}

/// Piece length at `rate`: a piece lasts at most 1/16 s, within [`PIECE_MIN`]..[`PIECE_MAX`].
fn piece_len(rate: u64) -> usize {
    usize::try_from(rate / 16)
        .unwrap_or(PIECE_MAX)
        .clamp(PIECE_MIN, PIECE_MAX)
}

/// Bytes the bucket holds at most at `rate`: a tenth of a second, at least one piece (what
/// passes at once after an idle spell, and what absorbs a timer's lateness).
fn capacity(rate: u64) -> f64 {
    (rate as f64 / 10.0).max(piece_len(rate) as f64)
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: 0.0,
            last: None,
        }
    }

    /// Takes `n` bytes at `now` at `rate`: `None` when they may pass (the bucket may go into
    /// debt by up to one piece), else how long to wait before asking again.
    fn take(&mut self, now: Instant, rate: u64, n: usize) -> Option<Duration> {
        let cap = capacity(rate);
        self.tokens = match self.last {
            None => cap,
            Some(last) => {
                let earned = now.saturating_duration_since(last).as_secs_f64() * rate as f64;
                (self.tokens + earned).min(cap)
            }
        };
        self.last = Some(now);
        if self.tokens >= 0.0 {
            self.tokens -= n as f64;
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / rate as f64))
        }
    }
}

/// The bandwidth limiter of one site, shared by all its copies.
pub struct Limiter {
    setting: Mutex<Bandwidth>,
    clock: Arc<dyn WeekClock>,
    bucket: Mutex<Bucket>,
    /// Waiters in the order they came: one piece each, then back in the queue.
    turn: tokio::sync::Mutex<()>,
    changed: Notify,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("setting", &*self.setting.lock())
            .finish()
    }
}

impl Limiter {
    /// A limiter at `setting`, reading timetables on `clock`.
    pub fn new(setting: Bandwidth, clock: Arc<dyn WeekClock>) -> Limiter {
        Limiter {
            setting: Mutex::new(setting),
            clock,
            bucket: Mutex::new(Bucket::new()),
            turn: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
        }
    }

    /// A limiter that never limits.
    pub fn unlimited() -> Limiter {
        Limiter::new(Bandwidth::Off, Arc::new(LocalWeekClock::default()))
    }

    /// Changes the limit; pieces waiting read it at once.
    pub fn set(&self, setting: Bandwidth) {
        *self.setting.lock() = setting;
        self.changed.notify_waiters();
    }

    /// The limit set.
    pub fn setting(&self) -> Bandwidth {
        self.setting.lock().clone()
    }

    /// The rate in force now (bytes per second); `None` = no limit.
    pub fn rate_now(&self) -> Option<u64> {
        let setting = self.setting.lock();
        match &*setting {
            Bandwidth::Off => None,
            Bandwidth::Rate(r) => Some(*r),
            t @ Bandwidth::Timetable(_) => t.rate_at(self.clock.minute_of_week()),
        }
    }

    /// How long a piece may be now; `None` = no limit (bodies pass as they come).
    pub fn piece_len(&self) -> Option<usize> {
        self.rate_now().map(piece_len)
    }

    /// Waits until `n` bytes may pass, in turn with the other copies of the site.
    pub async fn acquire(&self, n: usize) {
        if n == 0 || self.rate_now().is_none() {
            return;
        }
        let _turn = self.turn.lock().await;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let Some(rate) = self.rate_now() else {
                return;
            };
            let Some(wait) = self.bucket.lock().take(Instant::now(), rate, n) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep(wait.min(RECHECK)) => {}
                () = changed => {}
            }
        }
    }
}

/// `body`, handed on in pieces that each wait for `limiter`'s tokens.
pub fn limit(body: ByteStream, limiter: Arc<Limiter>) -> ByteStream {
    let state = (body, Bytes::new(), limiter);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut body, mut rest, limiter)| async move {
            if rest.is_empty() {
                match body.next().await? {
                    Ok(chunk) => rest = chunk,
                    Err(e) => return Some((Err(e), (body, rest, limiter))),
                }
            }
            let n = limiter
                .piece_len()
                .map_or(rest.len(), |p| p.min(rest.len()));
            let piece = rest.split_to(n);
            limiter.acquire(piece.len()).await;
            Some((Ok(piece), (body, rest, limiter)))
        },
    ))
}

/// Who set the limit in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[[sites]] bandwidth` (or its default, off).
    Configuration,
    /// `POST crr/bandwidth`, stored.
    Api,
}

impl Origin {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Configuration => "configuration",
            Origin::Api => "api",
        }
    }
}

/// A site's limit as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The limit in force (a timetable as a whole).
    pub limit: Bandwidth,
    /// The rate it gives now; `None` = no limit.
    pub current: Option<u64>,
    /// Who set it.
    pub origin: Origin,
}

/// The state store cursor holding `site`'s limit set through the API.
pub fn cursor_name(site: &str) -> String {
    format!("bandwidth:crr:{site}")
}

struct SiteLimit {
    limiter: Arc<Limiter>,
    configured: Bandwidth,
    /// The stored limit, which wins over the configured one.
    stored: Mutex<Option<Bandwidth>>,
}

impl SiteLimit {
    fn apply(&self, stored: Option<Bandwidth>) {
        let effective = stored.clone().unwrap_or_else(|| self.configured.clone());
        *self.stored.lock() = stored;
        if self.limiter.setting() != effective {
            self.limiter.set(effective);
        }
    }
}

/// The limits of every configured site.
pub struct Bandwidths {
    sites: HashMap<String, SiteLimit>,
    /// Held across read-store-publish, so the API and the sync pass never interleave.
    write: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Bandwidths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bandwidths")
            .field("sites", &self.sites.len())
            .finish()
    }
}

/// The stored limit: `None` for none (absent, or the empty value a reset writes).
fn decode(site: &str, value: Option<Vec<u8>>) -> Option<Bandwidth> {
    let value = value.filter(|v| !v.is_empty())?;
    let parsed = std::str::from_utf8(&value)
        .map_err(|e| e.to_string())
        .and_then(|t| Bandwidth::parse(t).map_err(|e| e.to_string()));
    match parsed {
        Ok(b) => Some(b),
        Err(error) => {
            tracing::warn!(site, %error, "Unreadable stored bandwidth limit; the configured one applies.");
            None
        }
    }
}

impl Bandwidths {
    /// The configured limit of each site (none stored yet: see [`Bandwidths::load`]);
    /// timetables read `clock`.
    pub fn new(
        sites: impl IntoIterator<Item = (String, Bandwidth)>,
        clock: Arc<dyn WeekClock>,
    ) -> Bandwidths {
        let sites = sites
            .into_iter()
            .map(|(name, configured)| {
                let limit = SiteLimit {
                    limiter: Arc::new(Limiter::new(configured.clone(), clock.clone())),
                    configured,
                    stored: Mutex::new(None),
                };
                (name, limit)
            })
            .collect();
        Bandwidths {
            sites,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// The limiter of `site`, if configured.
    pub fn limiter(&self, site: &str) -> Option<Arc<Limiter>> {
        self.sites.get(site).map(|s| s.limiter.clone())
    }

    /// What the API shows of `site`'s limit, if configured.
    pub fn view(&self, site: &str) -> Option<View> {
        let s = self.sites.get(site)?;
        let stored = s.stored.lock().clone();
        let origin = if stored.is_some() {
            Origin::Api
        } else {
            Origin::Configuration
        };
        Some(View {
            limit: s.limiter.setting(),
            current: s.limiter.rate_now(),
            origin,
        })
    }

    /// Applies the stored limits (at start, before the processors run).
    ///
    /// # Errors
    /// The store's error.
    pub async fn load(&self, store: &dyn StateStore) -> Result<(), StoreError> {
        let _guard = self.write.lock().await;
        for (site, s) in &self.sites {
            s.apply(decode(site, store.cursor(&cursor_name(site)).await?));
        }
        Ok(())
    }

    /// Stores `limit` for `site` (durable), then applies it; `None` removes the stored limit,
    /// so the configured one applies again. Unknown sites are ignored.
    ///
    /// # Errors
    /// The store's error; nothing changes then.
    pub async fn set(
        &self,
        store: &dyn StateStore,
        site: &str,
        limit: Option<Bandwidth>,
    ) -> Result<(), StoreError> {
        let Some(s) = self.sites.get(site) else {
            return Ok(());
        };
        let _guard = self.write.lock().await;
        let value = limit.as_ref().map(|b| b.to_string()).unwrap_or_default();
        store
            .apply(vec![StoreOp::PutCursor {
                name: cursor_name(site),
                value: value.into_bytes(),
            }])
            .await?;
        s.apply(limit);
        let v = self.view(site);
        tracing::info!(site, limit = %v.as_ref().map(|v| v.limit.to_string()).unwrap_or_default(),
            origin = v.map_or("", |v| v.origin.as_str()), "Bandwidth limit changed.");
        Ok(())
    }

    /// Applies the limits stored since the last pass (another process's API); returns the
    /// sites whose limit changed.
    ///
    /// # Errors
    /// The store's error.
    pub async fn refresh(&self, store: &dyn StateStore) -> Result<Vec<String>, StoreError> {
        let _guard = self.write.lock().await;
        let mut changed = Vec::new();
        for (site, s) in &self.sites {
            let stored = decode(site, store.cursor(&cursor_name(site)).await?);
            if *s.stored.lock() != stored {
                s.apply(stored);
                tracing::info!(site, limit = %s.limiter.setting(),
                    "Bandwidth limit changed in the store; applied.");
                changed.push(site.clone());
            }
        }
        Ok(changed)
    }
}

/// Applies the limits other processes store, every [`SYNC_TICK`], until `token` is cancelled.
pub async fn run_sync(
    store: Arc<dyn StateStore>,
    bandwidths: Arc<Bandwidths>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(SYNC_TICK) => {}
        }
        if let Err(error) = bandwidths.refresh(store.as_ref()).await {
            tracing::warn!(%error, "Cannot read the stored bandwidth limits; will retry.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn p(s: &str) -> Bandwidth {
        Bandwidth::parse(s).unwrap()
    }

    fn err(s: &str) -> String {
        Bandwidth::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn rates_units_and_off() {
        assert_eq!(p("off"), Bandwidth::Off);
        assert_eq!(p(" OFF "), Bandwidth::Off);
        assert_eq!(p("50MiB/s"), Bandwidth::Rate(50 << 20));
        assert_eq!(p("50MiB"), Bandwidth::Rate(50 << 20));
        assert_eq!(p("50M"), Bandwidth::Rate(50 << 20));
        assert_eq!(p("50 MiB/s"), Bandwidth::Rate(50 << 20));
        assert_eq!(p("512k"), Bandwidth::Rate(512 << 10));
        assert_eq!(p("512KiB/s"), Bandwidth::Rate(512 << 10));
        assert_eq!(p("1.5MiB/s"), Bandwidth::Rate(3 << 19));
        assert_eq!(p("2G"), Bandwidth::Rate(2 << 30));
        assert_eq!(p("1TiB/s"), Bandwidth::Rate(1 << 40));
        assert_eq!(p("4096B/s"), Bandwidth::Rate(4096));
        assert!(err("10").contains("no unit"), "{}", err("10"));
        assert!(err("10MB/s").contains("ambiguous"));
        assert!(err("10Mbit/s").contains("unknown unit"));
        assert!(err("fast").contains("number"));
        assert!(err("0MiB/s").contains("below 1KiB/s"));
        assert!(err("100B/s").contains("below"));
        assert!(err("2000TiB/s").contains("1PiB/s"));
        assert!(err("").contains("empty"));
        assert!(err("-1MiB/s").contains("number"));
    }

    #[test]
    fn timetables_parse_and_refuse_what_is_wrong() {
        assert_eq!(
            p("08:00,10MiB/s 19:00,off"),
            Bandwidth::Timetable(vec![
                Slot {
                    day: None,
                    minute: 480,
                    rate: Some(10 << 20)
                },
                Slot {
                    day: None,
                    minute: 1140,
                    rate: None
                },
            ])
        );
        assert_eq!(
            p("Mon-8:30,1M sun-23:59,OFF"),
            Bandwidth::Timetable(vec![
                Slot {
                    day: Some(0),
                    minute: 510,
                    rate: Some(1 << 20)
                },
                Slot {
                    day: Some(6),
                    minute: 1439,
                    rate: None
                },
            ])
        );
        assert_eq!(
            p("Saturday-00:00,1M"),
            Bandwidth::Timetable(vec![Slot {
                day: Some(5),
                minute: 0,
                rate: Some(1 << 20)
            }])
        );
        assert!(err("24:00,1M").contains("time of day"));
        assert!(err("8:5,1M").contains("time of day"));
        assert!(err("Xyz-08:00,1M").contains("time of day"));
        assert!(err("08:00,1M 10M").contains("not a timetable entry"));
        assert!(err("08:00,10").contains("no unit"));
        assert!(err("08:00,1M Mon-08:00,2M").contains("same time"));
        assert!(err("08:00,1M 08:00,off").contains("same time"));
    }

    #[test]
    fn the_canonical_text_parses_back() {
        for s in [
            "off",
            "10MiB/s",
            "1536KiB/s",
            "1500B/s",
            "3GiB/s",
            "08:00,10MiB/s 19:00,off",
            "Mon-08:00,1KiB/s 12:30,off Sun-23:59,2TiB/s",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
        assert_eq!(p("1.5M").to_string(), "1536KiB/s");
        assert_eq!(p("8:00,512k").to_string(), "08:00,512KiB/s");
    }

    #[test]
    fn a_timetable_entry_applies_until_the_next_and_wraps_round() {
        let t = p("08:00,10MiB/s 19:00,off");
        let at = |day: u32, h: u32, m: u32| t.rate_at(day * 1440 + h * 60 + m);
        assert_eq!(at(0, 7, 59), None, "before the first entry: the last one's");
        assert_eq!(at(0, 8, 0), Some(10 << 20));
        assert_eq!(at(3, 18, 59), Some(10 << 20));
        assert_eq!(at(3, 19, 0), None);
        assert_eq!(at(6, 23, 59), None);

        let w = p("Mon-08:00,1M Fri-18:00,off 12:00,2M");
        let at = |day: u32, h: u32| w.rate_at(day * 1440 + h * 60);
        assert_eq!(
            at(0, 7),
            Some(2 << 20),
            "Sunday 12:00's entry, wrapped round"
        );
        assert_eq!(at(0, 8), Some(1 << 20));
        assert_eq!(at(0, 12), Some(2 << 20));
        assert_eq!(at(4, 11), Some(2 << 20));
        assert_eq!(at(4, 12), Some(2 << 20));
        assert_eq!(at(4, 18), None);
        assert_eq!(at(5, 11), None);
        assert_eq!(at(5, 12), Some(2 << 20));
        assert_eq!(w.rate_at(WEEK_MINUTES + 8 * 60), Some(1 << 20));
    }

    /// A week clock the test moves.
    #[derive(Default)]
    struct TestWeek(AtomicU32);

    impl WeekClock for TestWeek {
        fn minute_of_week(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn the_limiter_follows_its_timetable_on_the_clock() {
        let week = Arc::new(TestWeek::default());
        let l = Limiter::new(p("08:00,10MiB/s 19:00,off"), week.clone());
        week.0.store(7 * 60, Ordering::SeqCst);
        assert_eq!(l.rate_now(), None);
        assert_eq!(l.piece_len(), None);
        week.0.store(8 * 60, Ordering::SeqCst);
        assert_eq!(l.rate_now(), Some(10 << 20));
        assert_eq!(l.piece_len(), Some(PIECE_MAX));
        week.0.store(19 * 60, Ordering::SeqCst);
        assert_eq!(l.rate_now(), None);
        l.set(p("2KiB/s"));
        assert_eq!(l.rate_now(), Some(2048));
        assert_eq!(l.piece_len(), Some(PIECE_MIN));
    }

    #[test]
    fn token_arithmetic() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = Bucket::new();
        let rate = 1 << 20; // 1 MiB/s: capacity 104,857.6 bytes, pieces of 64 KiB
                            // A fresh bucket is full: one piece passes, and so does the next (debt allowed).
        assert_eq!(b.take(ms(0), rate, 65_536), None);
        assert_eq!(b.take(ms(0), rate, 65_536), None);
        // 26,214.4 bytes owed: 25 ms at 1 MiB/s.
        let about = |d: Duration, us: i128| (d.as_micros() as i128 - us).abs() <= 1;
        let wait = b.take(ms(0), rate, 65_536).unwrap();
        assert!(about(wait, 25_000), "{wait:?}");
        // Earned meanwhile (and 1,048.6 bytes more): it passes, owing a piece less those.
        assert_eq!(b.take(ms(26), rate, 65_536), None);
        let wait = b.take(ms(26), rate, 65_536).unwrap();
        assert!(about(wait, 61_500), "{wait:?}");
        // Idle for a minute: the bucket holds a tenth of a second, not a minute.
        assert_eq!(b.take(ms(60_000), rate, 65_536), None);
        assert_eq!(b.take(ms(60_000), rate, 65_536), None);
        assert!(b.take(ms(60_000), rate, 65_536).is_some());
        // Over time the bytes granted follow the rate.
        let mut b = Bucket::new();
        let (mut now, mut granted) = (0u64, 0u64);
        while now < 10_000 {
            match b.take(ms(now), rate, 65_536) {
                None => granted += 65_536,
                Some(w) => now += (w.as_micros() as u64).div_ceil(1000),
            }
        }
        let expected = 10 * rate;
        assert!(
            granted >= expected && granted <= expected + 2 * capacity(rate) as u64,
            "{granted} bytes in 10 s at {rate} B/s"
        );
    }

    fn stream_of(chunks: Vec<usize>) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> = chunks
            .into_iter()
            .map(|n| Ok(Bytes::from(vec![7u8; n])))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn drain(body: ByteStream) -> (usize, usize) {
        let pieces: Vec<_> = body.collect().await;
        let total = pieces.iter().map(|p| p.as_ref().unwrap().len()).sum();
        (pieces.len(), total)
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_body_takes_its_time_and_keeps_its_bytes() {
        let l = Arc::new(Limiter::new(p("1MiB/s"), Arc::new(TestWeek::default())));
        let start = Instant::now();
        let (pieces, total) = drain(limit(stream_of(vec![3 << 20, 10, 1 << 20]), l)).await;
        assert_eq!(total, (4 << 20) + 10);
        assert!(pieces >= 64, "cut into pieces: {pieces}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(3_700) && took <= Duration::from_millis(4_200),
            "{took:?}"
        );
        // Off: passes as it comes, whole.
        let off = Arc::new(Limiter::unlimited());
        let start = Instant::now();
        assert_eq!(
            drain(limit(stream_of(vec![8 << 20, 5]), off)).await,
            (2, (8 << 20) + 5)
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_copy_is_not_starved_by_a_large_one() {
        let l = Arc::new(Limiter::new(p("1MiB/s"), Arc::new(TestWeek::default())));
        let large = tokio::spawn(drain(limit(stream_of(vec![8 << 20]), l.clone())));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        let (_, small) = drain(limit(stream_of(vec![100_000]), l.clone())).await;
        assert_eq!(small, 100_000);
        // Its two pieces each wait behind one piece of the large copy: about 1/4 s, where a
        // queue behind the large copy would take 7.5 s.
        let took = start.elapsed();
        assert!(took <= Duration::from_millis(400), "{took:?}");
        assert!(!large.is_finished());
        assert_eq!(large.await.unwrap().1, 8 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_limit_wakes_a_waiting_piece() {
        let l = Arc::new(Limiter::new(p("1KiB/s"), Arc::new(TestWeek::default())));
        let body = tokio::spawn(drain(limit(stream_of(vec![1 << 20]), l.clone())));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!body.is_finished());
        l.set(Bandwidth::Off);
        let done = tokio::time::timeout(Duration::from_millis(10), body).await;
        assert_eq!(done.unwrap().unwrap().1, 1 << 20);
    }
}
