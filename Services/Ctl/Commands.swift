import ArgumentParser
import Foundation
import StorageClient
import WatermarkCore

extension WatermarkCtl {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every watermark, or those with a status or stale.")
        @OptionGroup var connection: Connection
        @Option(help: "Only sources whose last run has this status (success, failed).") var status: String?
        @Option(help: "Only sources without a success for this long (90s, 30m, 2h, 3d).") var staleAfter: String?
        @Option(help: "table (aligned, with ages) or json (a JSON array, stable for scripts).")
        var output: OutputFormat = .table

        func run() async throws {
            try await exiting {
                var query = WatermarkQuery(limit: WatermarkQuery.maxLimit)
                if let status {
                    guard let value = RunStatus(rawValue: status) else {
                        throw Failure(2, "--status '\(status.prefix(32))' is not one of success, failed")
                    }
                    query.status = value
                }
                query.staleAfter = try staleAfter.map(duration)
                let all = try await connection.run { client in
                    var all: [Watermark] = []
                    while true {
                        let page = try await client.listWatermarks(query)
                        all += page.watermarks
                        guard let next = page.nextCursor else { return all }
                        query.after = try SourceID(next)
                    }
                }
                print(output == .json ? try Render.json(all) : Render.table(all, now: Timestamp.now()))
            }
        }
    }

    struct Get: ShowOne {
        static let configuration = CommandConfiguration(abstract: "One source's watermark.")
        @OptionGroup var connection: Connection
        @Argument(help: "The source id.") var id: String
        @Option(help: "table or json.") var output: OutputFormat = .table

        func run() async throws {
            try await show(
                { try await $0.getWatermark(sourceID: $1) }, none: "has no watermark (never collected, or reset)",
                table: { Render.table([$0], now: $1) })
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A source's runs, newest first.")
        @OptionGroup var connection: Connection
        @Argument(help: "The source id.") var id: String
        @Option(help: "How many runs (1 to 1000).") var limit: Int = 20
        @Option(help: "table or json.") var output: OutputFormat = .table

        func run() async throws {
            try await exiting {
                let source = try sourceID(id)
                let runs = try await connection.run { try await $0.history(sourceID: source, limit: limit) }
                print(output == .json ? try Render.json(runs) : Render.history(runs, now: Timestamp.now()))
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a source's watermark (a success at TIMESTAMP); backwards only with --force.")
        @OptionGroup var connection: Connection
        @Argument(help: "The source id.") var id: String
        @Argument(help: "RFC 3339, e.g. 2026-12-01T00:00:00Z.") var timestamp: String
        @Flag(help: "Accept a timestamp older than the stored one (a deliberate backfill).") var force = false
        @Flag(help: "Start a source that has no watermark yet (without it, an id with none is refused).")
        var create = false
        @Option(help: "Why, recorded in the history with who did it.") var reason: String?

        func run() async throws {
            try await exiting {
                let (source, mark) = (try sourceID(id), try parseTimestamp(timestamp))
                // Only an existing source unless --create: a mistyped id was created (exit 0, "version 1"), the real
                // source left as it was and a source nobody collects added to every list.
                let stored = try await connection.run { client in
                    do {
                        return try await client.setMark(
                            source, to: mark, force: force, reason: reason, precondition: create ? nil : .exists)
                    } catch StorageClientError.preconditionFailed {
                        throw Failure(1, "\(source) has no watermark: check the id, or pass --create to start it")
                    }
                }
                print(
                    "\(source): watermark \(stored.lastSuccessfulTimestamp.map { "\($0)" } ?? "none"), version \(stored.version)"
                )
            }
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a source's watermark: its next run starts from its lookback. Asks first unless --yes.")
        @OptionGroup var connection: Connection
        @Argument(help: "The source id.") var id: String
        @Flag(help: "Do not ask.") var yes = false
        @Option(help: "Why, recorded in the history with who did it.") var reason: String?

        func run() async throws {
            try await exiting {
                let source = try sourceID(id)
                if !yes {
                    guard isatty(STDIN_FILENO) != 0 else {
                        throw Failure(2, "reset needs a confirmation: run it in a terminal, or pass --yes")
                    }
                    print(
                        "Reset the watermark of \(source)? Its next run starts from its lookback. [y/N] ",
                        terminator: "")
                    guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                        throw Failure(1, "not reset")
                    }
                }
                try await connection.run {
                    try await $0.deleteWatermark(sourceID: source, precondition: nil, leaseToken: nil, reason: reason)
                }
                print("\(source): reset")
            }
        }
    }

    struct Copy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give TO the watermark of FROM (a renamed source); backwards only with --force.")
        @OptionGroup var connection: Connection
        @Argument(help: "The source to copy from.") var from: String
        @Argument(help: "The source to copy to.") var to: String
        @Flag(help: "Accept a timestamp older than TO's.") var force = false
        @Option(help: "Why, recorded in TO's history with who did it.") var reason: String?

        func run() async throws {
            try await exiting {
                let (source, target) = (try sourceID(from), try sourceID(to))
                let stored = try await connection.run { client in
                    guard let mark = try await client.getWatermark(sourceID: source)?.lastSuccessfulTimestamp else {
                        throw Failure(1, "\(source) has no successful watermark to copy")
                    }
                    return try await client.setMark(
                        target, to: mark, force: force, reason: reason ?? "copied from \(source)")
                }
                print(
                    "\(target): watermark \(stored.lastSuccessfulTimestamp.map { "\($0)" } ?? "none") (from \(source))")
            }
        }
    }

    struct Lease: ShowOne {
        static let configuration = CommandConfiguration(
            abstract: "Who holds the source's lease, its fencing token and when it ends; exit 1 when none is live.")
        @OptionGroup var connection: Connection
        @Argument(help: "The source id.") var id: String
        @Option(help: "table or json.") var output: OutputFormat = .table

        func run() async throws {
            try await show(
                { try await $0.lease(sourceID: $1) }, none: "has no live lease (none granted, released or expired)",
                table: Render.lease)
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Every watermark as JSON lines, for `import` into another storage (another backend, say).")
        @OptionGroup var connection: Connection

        func run() async throws {
            try await exiting {
                try await connection.run { client in
                    var query = WatermarkQuery(limit: WatermarkQuery.maxLimit)
                    while true {
                        let page = try await client.listWatermarks(query)
                        for watermark in page.watermarks { print(try Render.json(watermark)) }
                        guard let next = page.nextCursor else { return }
                        query.after = try SourceID(next)
                    }
                }
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Read `export`'s JSON lines from standard input and set each watermark (a failing source stays failing, with its last error); a regression is refused unless --force.",
            discussion: "Exit code 1 when any line was refused (each is named on standard error); the others are set.")
        @OptionGroup var connection: Connection
        @Flag(help: "Accept watermarks older than the stored ones.") var force = false
        @Option(help: "Why, recorded in each source's history with who did it.") var reason: String?

        func run() async throws {
            try await exiting {
                var lines: [(Int, Watermark)] = []
                var number = 0
                while let line = readLine() {
                    number += 1
                    guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
                    do {
                        lines.append((number, try JSONDecoder().decode(Watermark.self, from: Data(line.utf8))))
                    } catch {
                        throw Failure(2, "line \(number) is not an exported watermark: \(error)")
                    }
                }
                let (set, refused) = try await connection.run { client in
                    var (set, refused) = (0, 0)
                    for (number, watermark) in lines {
                        do {
                            if let mark = watermark.lastSuccessfulTimestamp {
                                try await client.updateWatermark(
                                    sourceID: watermark.sourceID, timestamp: mark, status: .success,
                                    errorMessage: nil, recordsCollected: watermark.recordsCollected,
                                    options: UpdateOptions(force: force, reason: reason))
                            }
                            // A source that was failing is failing on the new storage too, its last error on top of
                            // its mark: it arrived as a success (its failure alert lost), and one that never
                            // succeeded was skipped without a word.
                            if watermark.status == .failed {
                                try await client.updateWatermark(
                                    sourceID: watermark.sourceID, timestamp: nil, status: .failed,
                                    errorMessage: watermark.errorMessage, recordsCollected: 0,
                                    options: UpdateOptions(reason: reason))
                            }
                            set += 1
                        } catch let error as StorageClientError where !error.isTransient {
                            // A refused token refuses every line alike: the token's exit code (3), not "refused".
                            if case .unauthorized = error { throw error }
                            refused += 1
                            FileHandle.standardError.write(
                                Data("watermarkctl: line \(number) (\(watermark.sourceID)) refused: \(error)\n".utf8))
                        }
                    }
                    return (set, refused)
                }
                print("imported \(set), refused \(refused)")
                if refused > 0 { throw Failure(1, "\(refused) watermark(s) refused (--force accepts regressions)") }
            }
        }
    }
}

/// `get` and `lease`: one thing of one source, as a table or JSON; exit 1 when there is none.
protocol ShowOne: AsyncParsableCommand {
    var connection: Connection { get }
    var id: String { get }
    var output: OutputFormat { get }
}

extension ShowOne {
    func show<T: Encodable>(
        _ fetch: @escaping (HTTPStorageClient, SourceID) async throws -> T?, none: String,
        table: (T, Timestamp) -> String
    ) async throws {
        try await exiting {
            let source = try sourceID(id)
            guard let found = try await connection.run({ try await fetch($0, source) }) else {
                throw Failure(1, "\(source) \(none)")
            }
            print(output == .json ? try Render.json(found) : table(found, Timestamp.now()))
        }
    }
}

extension StorageClient {
    /// What `set` and `copy` record: a success at `mark` (records 0), backwards only with `force`; `.exists` refuses a
    /// source with no watermark (412).
    func setMark(
        _ source: SourceID, to mark: Timestamp, force: Bool, reason: String?, precondition: WritePrecondition? = nil
    ) async throws -> Watermark {
        try await updateWatermark(
            sourceID: source, timestamp: mark, status: .success, errorMessage: nil, recordsCollected: 0,
            options: UpdateOptions(precondition: precondition, force: force, reason: reason))
    }
}
