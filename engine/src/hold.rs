//! A hold: the part of a reservation taken from one budget cell or from a lease. Its own
//! module, so the budget cells and the lease cell both use it without importing each other.

/// The part of a reservation taken at one level, or from the allocation's lease (whose
/// `period` is then the lease's epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hold {
    /// Nanos held (0 where the cell has no limit).
    pub(crate) nanos: u64,
    /// The period it was taken in.
    pub(crate) period: i64,
    /// Whether the cell had a limit, so the hold bounds what the reservation may take.
    pub(crate) limited: bool,
}
