//! The syntax of a bandwidth limit ([`Bandwidth`]; see [`super`] for the grammar): parsed from
//! the configuration and the API, printed back canonically, and the rate in force at a time of
//! the week. Pure: the configuration reads it without the limiter or the store.

use std::fmt;

/// Lowest accepted rate (bytes per second).
pub const MIN_RATE: u64 = 1024;
/// Highest accepted rate (1 PiB/s; beyond it a limit means nothing).
pub const MAX_RATE: u64 = 1 << 50;

/// Minutes in a week.
pub(crate) const WEEK_MINUTES: u32 = 7 * 24 * 60;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// What `bandwidth` accepts, for error messages.
const SYNTAX: &str =
    "expected \"off\", a rate such as \"10MiB/s\" (units B, KiB, MiB, GiB, TiB, or \
     rclone's K, M, G, T; per second), or a timetable such as \"08:00,10MiB/s 19:00,off\"";

/// A bandwidth limit as configured or set through the API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bandwidth {
    /// No limit.
    #[default]
    Off,
    /// Bytes per second.
    Rate(u64),
    /// A timetable: entries in the order given, at distinct times of the week.
    Timetable(Vec<Slot>),
}

/// One timetable entry: from `minute` of `day` (every day when `None`), `rate` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Day of the week, 0 = Monday; `None` = every day.
    pub day: Option<u8>,
    /// Minute of the day (0..1440), host local time.
    pub minute: u16,
    /// Bytes per second; `None` = no limit.
    pub rate: Option<u64>,
}

/// A bandwidth limit that does not parse; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl std::str::FromStr for Bandwidth {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Bandwidth, ParseError> {
        Bandwidth::parse(s)
    }
}

impl Bandwidth {
    /// Parses a limit (see the module documentation).
    ///
    /// # Errors
    /// [`ParseError`] naming the part that is wrong and what is accepted.
    pub fn parse(s: &str) -> Result<Bandwidth, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ParseError(format!("empty; {SYNTAX}")));
        }
        if !t.contains(',') {
            return Ok(match parse_rate(t)? {
                None => Bandwidth::Off,
                Some(r) => Bandwidth::Rate(r),
            });
        }
        let mut slots: Vec<Slot> = Vec::new();
        for entry in t.split_whitespace() {
            let Some((when, rate)) = entry.split_once(',') else {
                return Err(ParseError(format!(
                    "{entry:?} is not a timetable entry (HH:MM,RATE or Mon-HH:MM,RATE); {SYNTAX}"
                )));
            };
            let (day, minute) = parse_when(when)?;
            let slot = Slot {
                day,
                minute,
                rate: parse_rate(rate)?,
            };
            if let Some(other) = slots.iter().find(|o| starts_overlap(o, &slot)) {
                return Err(ParseError(format!(
                    "two timetable entries start at the same time: {} and {}",
                    when_text(other),
                    when_text(&slot)
                )));
            }
            slots.push(slot);
        }
        Ok(Bandwidth::Timetable(slots))
    }

    /// The rate in force at `minute_of_week` (0 = Monday 00:00, host local time); `None` = no
    /// limit.
    pub fn rate_at(&self, minute_of_week: u32) -> Option<u64> {
        match self {
            Bandwidth::Off => None,
            Bandwidth::Rate(r) => Some(*r),
            Bandwidth::Timetable(slots) => {
                let now = minute_of_week % WEEK_MINUTES;
                // The latest start at or before now; before the week's first start, the
                // week's last one (it wraps round).
                let mut best: Option<(u32, Option<u64>)> = None;
                let mut last: Option<(u32, Option<u64>)> = None;
                for s in slots {
                    for start in starts(s) {
                        if start <= now && best.is_none_or(|(b, _)| start > b) {
                            best = Some((start, s.rate));
                        }
                        if last.is_none_or(|(l, _)| start > l) {
                            last = Some((start, s.rate));
                        }
                    }
                }
                best.or(last).and_then(|(_, r)| r)
            }
        }
    }
}

/// The weekly start minutes of a slot: one for a day's entry, seven for an every-day entry.
fn starts(s: &Slot) -> impl Iterator<Item = u32> + '_ {
    let days = match s.day {
        Some(d) => u32::from(d)..u32::from(d) + 1,
        None => 0..7,
    };
    days.map(move |d| d * 1440 + u32::from(s.minute))
}

fn starts_overlap(a: &Slot, b: &Slot) -> bool {
    starts(a).any(|x| starts(b).any(|y| x == y))
}

fn when_text(s: &Slot) -> String {
    let time = format!("{:02}:{:02}", s.minute / 60, s.minute % 60);
    match s.day {
        Some(d) => format!("{}-{time}", DAYS[usize::from(d) % 7]),
        None => time,
    }
}

/// `HH:MM` or `Day-HH:MM`.
fn parse_when(when: &str) -> Result<(Option<u8>, u16), ParseError> {
    let bad = || {
        ParseError(format!(
            "{when:?} is not a time of day (HH:MM from 00:00 to 23:59, optionally after a day: \
             Mon-08:00)"
        ))
    };
    let (day, time) = match when.split_once('-') {
        Some((d, t)) => (Some(parse_day(d).ok_or_else(bad)?), t),
        None => (None, when),
    };
    let (h, m) = time.split_once(':').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((day, h * 60 + m))
}

fn parse_day(d: &str) -> Option<u8> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let d = d.to_ascii_lowercase();
    FULL.iter()
        .position(|f| d == *f || (d.len() == 3 && f.starts_with(d.as_str())))
        .and_then(|i| u8::try_from(i).ok())
}

/// A rate (`None` for `off`).
fn parse_rate(s: &str) -> Result<Option<u64>, ParseError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = |why: &str| ParseError(format!("{s:?} {why}; {SYNTAX}"));
    let body = s.strip_suffix("/s").unwrap_or(s);
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    let unit = unit.trim_start();
    let n: f64 = number
        .parse()
        .map_err(|_| bad("does not start with a number"))?;
    let mult: u64 = match unit {
        "B" => 1,
        "K" | "k" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "T" | "Ti" | "TiB" => 1 << 40,
        "" => {
            return Err(bad(
                "has no unit (rclone reads a bare number as KiB/s: write 512KiB/s)",
            ))
        }
        "kB" | "KB" | "MB" | "GB" | "TB" => {
            return Err(bad(
                "is ambiguous (powers of 1000 or of 1024?): write KiB, MiB, GiB or TiB",
            ))
        }
        _ => return Err(bad("has an unknown unit")),
    };
    let bytes = (n * mult as f64).round();
    if !bytes.is_finite() || bytes > MAX_RATE as f64 {
        return Err(bad("is more than 1PiB/s"));
    }
    let bytes = bytes as u64;
    if bytes < MIN_RATE {
        return Err(bad(
            "is below 1KiB/s (write \"off\" for no limit; pause the site to stop it)",
        ));
    }
    Ok(Some(bytes))
}

/// A rate as text: the largest binary unit that divides it exactly.
pub fn rate_text(rate: Option<u64>) -> String {
    let Some(r) = rate else {
        return "off".to_string();
    };
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        let m = 1u64 << shift;
        if r.is_multiple_of(m) {
            return format!("{}{unit}/s", r / m);
        }
    }
    format!("{r}B/s")
}

impl fmt::Display for Bandwidth {
    /// The canonical text, which parses back to the same limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bandwidth::Off => f.write_str("off"),
            Bandwidth::Rate(r) => f.write_str(&rate_text(Some(*r))),
            Bandwidth::Timetable(slots) => {
                let entries: Vec<String> = slots
                    .iter()
                    .map(|s| format!("{},{}", when_text(s), rate_text(s.rate)))
                    .collect();
                f.write_str(&entries.join(" "))
            }
        }
    }
}
