//! `audit.*`: how much of the audit log is kept and read at once.

crate::section! {
    /// The audit log of administrative calls.
    pub struct Settings {
        /// Events kept per tenant (about: Redis trims whole blocks); the
        /// oldest go first.
        pub max_entries: u64 = 10_000, range(100, 10_000_000);
        /// Largest `AuditService/List` page.
        pub max_page_size: usize = 1000, range(1, 10_000);
        /// Events queued for storage before new ones are dropped (they
        /// are still logged).
        pub queue: usize = 10_000, range(100, 1_000_000);
    }
}
