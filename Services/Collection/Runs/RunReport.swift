import WatermarkCore

/// What one run of one source did, for logs, `/status`, `/metrics` and `--once`.
struct RunReport: Sendable, Equatable {
    enum Outcome: String, Sendable, Codable {
        /// Everything fetched and written; the watermark update was applied or queued.
        case success
        /// The source, the sink or the storage failed; the watermark did not move.
        case failed
        /// Another replica holds the source's lease: not a failure, that replica collects it.
        case skipped
        /// Shutdown arrived mid-run: what was written stays (and is deduplicated next time), the watermark
        /// did not move.
        case abandoned
    }

    var sourceID: SourceID
    var outcome: Outcome
    var startedAt: Timestamp
    var finishedAt: Timestamp
    /// New records written to the sink (duplicates dropped are not counted).
    var recordsCollected: Int64 = 0
    /// Records the source sent again that were already in the sink.
    var duplicatesDropped: Int64 = 0
    /// The watermark after the run (the new mark on success, the previous one otherwise).
    var watermark: Timestamp?
    var errorMessage: String?
    /// The update went to the on-disk queue because the storage was unreachable.
    var updateQueued = false
    /// The run went on without a lease because the storage was unreachable.
    var withoutLease = false
    /// Times the watermark moved before the end of the run.
    var checkpoints = 0
    /// Drop-folder files this run found bad: moved to `.rejected/`, or left in place (cut short, or a folder that
    /// cannot be written).
    var rejectedFiles = 0
    /// Set when the run should be tried again after another time than the source's interval: sooner when skipped for
    /// want of a lease, when the source's `Retry-After` says after a refusal (rate limited).
    var retryAfter: Duration?
    /// Skipped because another collector holds the source's lease (it collects the source).
    var leaseHeldElsewhere = false

    var duration: Duration { finishedAt.duration(since: startedAt) }

    /// Whether the source went uncollected for want of something here: the run failed, or it was skipped because
    /// the storage could not be asked for the lease (`REQUIRE_LEASE=true`). A source whose lease another replica
    /// holds is collected there. `--once` exits non-zero for such a run: it will not be retried.
    var notCollected: Bool { outcome == .failed || (outcome == .skipped && !leaseHeldElsewhere) }
}
