import WatermarkCore

/// The marks a run has seen, and which of them may become the watermark.
///
/// Only marks not later than this process's clock count: a record from the future is written (once) but does
/// not move the mark, so records stamped before it that arrive later are still asked for; it is read again
/// and dropped as a duplicate until the clock passes it.
struct MarkTracker {
    /// The watermark as stored (the previous run's, or the last checkpoint).
    var committed: Timestamp
    /// The newest mark seen that is not in the future.
    private(set) var newest: Timestamp?
    /// The newest mark seen that is in the future, for the warning.
    private(set) var newestInFuture: Timestamp?
    /// A mark whose records are all on disk while the run goes on, when the source's pages say so.
    private(set) var checkpoint: Timestamp?
    /// The previous page's high-water mark, from a source whose pages come in ascending order.
    private var openMark: Timestamp?

    init(committed: Timestamp) {
        self.committed = committed
    }

    mutating func add(_ page: CollectorPage, now: Timestamp) {
        for mark in page.records.map(\.mark) + [page.highWaterMark].compactMap({ $0 }) {
            if mark <= now {
                newest = max(newest ?? mark, mark)
            } else {
                newestInFuture = max(newestInFuture ?? mark, mark)
            }
        }
        // The previous page's last instant is complete once this page starts strictly after it.
        if let open = openMark, let first = page.firstMark, first > open, open <= now, open > committed {
            checkpoint = max(checkpoint ?? open, open)
        }
        openMark = page.firstMark == nil ? nil : page.highWaterMark
    }
}
