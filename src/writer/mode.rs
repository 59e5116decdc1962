//! A partition writer's mode, as the rest of the process sees it (the API
//! queues commands only to a writer that is [`Mode::Writing`]).

/// What a partition's writer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Folding the log from its stored state to the end, at start: the
    /// partition answers `Unavailable` until it is done.
    CatchingUp = 0,
    /// Owning the partition: deciding and appending commands.
    Writing = 1,
    /// Another writer owns the partition, or nobody here wants it: its
    /// records are folded as they arrive.
    Following = 2,
    /// Letting the partition go: the commands queued already are decided,
    /// no new ones are taken.
    Releasing = 3,
    /// A newer claim took the partition: followed, and claimed again only
    /// under a newer assignment.
    Fenced = 4,
    /// Its state could not be read: the writer has stopped.
    Stopped = 5,
}

impl Mode {
    pub const ALL: [Mode; 6] =
        [Mode::CatchingUp, Mode::Writing, Mode::Following, Mode::Releasing, Mode::Fenced, Mode::Stopped];

    /// Its name in the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::CatchingUp => "catching_up",
            Mode::Writing => "writing",
            Mode::Following => "following",
            Mode::Releasing => "releasing",
            Mode::Fenced => "fenced",
            Mode::Stopped => "stopped",
        }
    }

    /// The mode stored as `byte` (an atomic holds it).
    pub(super) fn from_byte(byte: u8) -> Mode {
        Mode::ALL.get(byte as usize).copied().unwrap_or(Mode::Stopped)
    }

    /// Whether a batch may append in this mode (a releasing writer still
    /// decides what was queued before).
    pub(super) fn appends(self) -> bool {
        matches!(self, Mode::Writing | Mode::Releasing)
    }
}

#[cfg(test)]
mod tests {
    use super::Mode;

    #[test]
    fn every_mode_is_read_back_from_its_byte() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_byte(m as u8), m);
        }
        assert_eq!(Mode::from_byte(200), Mode::Stopped);
    }
}
