import WatermarkCore

/// Where a run's records go: durably, and each (source, id, version) once.
///
/// A run opens its source's part of the sink before it takes the lease, writes page after page, and moves the
/// watermark only past pages `write` returned from: a crash before that makes the source send those records
/// again, and the sink drops the ones it already holds. The files of `NDJSONFileSink` are the default.
protocol Sink: Sendable {
    /// `source`'s part of the sink as a crash left it (torn writes undone), ready for a run.
    func open(_ source: SourceID) async throws(SinkError) -> any SinkWriter
}

/// One run's access to the sink.
protocol SinkWriter: Sendable {
    /// Stores the records of `records` the sink does not hold yet (nor twice within the page) and returns them,
    /// in page order, once they are durable.
    func write(_ records: [CollectedRecord], collectedAt: Timestamp) async throws(SinkError) -> [CollectedRecord]

    /// Called before the watermark moves mid-run: what the sink keeps beside the records of the pages written so
    /// far is made to outlast a crash. A failure costs time only, never a record.
    func checkpoint() async throws(SinkError)

    /// Called once when the run ends, however it ends. A failure costs time only, never a record.
    func finish() async throws(SinkError)
}

/// The NDJSON files under `DATA_DIR/<source_id>/`, with the dedup index of each source under `DATA_DIR/.state`.
struct NDJSONFileSink: Sink {
    let dataDirectory: String

    func open(_ source: SourceID) async throws(SinkError) -> any SinkWriter {
        let files = NDJSONSink(dataDirectory: dataDirectory, sourceID: source)
        try files.recover()
        let index = try DedupIndex(
            path: CollectionConfiguration.stateDirectory(of: dataDirectory) + "/dedup/\(source).sqlite")
        try index.catchUp(with: files)
        return Writer(files: files, index: index)
    }

    struct Writer: SinkWriter {
        let files: NDJSONSink
        let index: DedupIndex

        func write(_ records: [CollectedRecord], collectedAt: Timestamp) async throws(SinkError) -> [CollectedRecord] {
            // A failed checkpoint rolled back the keys of pages whose lines are on disk: they are indexed again from
            // the files before anything else is admitted (a run that went on without them wrote their records twice
            // when the source sent them again).
            if index.isBehind { try index.catchUp(with: files) }
            return try await index.admit(records) { records throws(SinkError) in
                try files.append(records, collectedAt: collectedAt)
            }
        }

        /// Commits the dedup index's pages so far. The index commits lazily (its keys are indexed again from the
        /// files after a crash), but a day file shipped away before the next run cannot be indexed again: the
        /// records before a checkpoint, sent again by the next run's overlap, were then written twice.
        func checkpoint() async throws(SinkError) { try await index.flush() }

        /// Commits the dedup index's last pages; should it fail, the next run indexes them again from the files.
        func finish() async throws(SinkError) { try await index.flush() }
    }
}
