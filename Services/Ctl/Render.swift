import Foundation
import WatermarkCore

/// What `watermarkctl` prints: aligned tables with ages for people, the service's own JSON for scripts.
enum Render {
    static func json(_ value: some Encodable) throws -> String {
        String(decoding: try JSONEncoder.contract().encode(value), as: UTF8.self)
    }

    static func table(_ watermarks: [Watermark], now: Timestamp) -> String {
        var rows = [["SOURCE", "STATUS", "WATERMARK", "AGE", "VERSION", "FAILURES", "RECORDS", "ERROR"]]
        for watermark in watermarks {
            rows.append([
                watermark.sourceID.rawValue, watermark.status.rawValue,
                watermark.lastSuccessfulTimestamp.map { "\($0)" } ?? "-",
                watermark.lastSuccessfulTimestamp.map { age(now.duration(since: $0)) } ?? "never",
                String(watermark.version), String(watermark.consecutiveFailures), String(watermark.recordsCollected),
                watermark.errorMessage.map { String($0.prefix(60)) } ?? "",
            ])
        }
        return aligned(rows)
    }

    static func history(_ runs: [WatermarkRun], now: Timestamp) -> String {
        var rows = [["VERSION", "RECORDED", "AGE", "STATUS", "TIMESTAMP", "RECORDS", "ACTOR", "REASON / ERROR"]]
        for run in runs {
            let note = [run.reason, run.errorMessage.map { "error: \($0)" }].compactMap { $0 }.joined(separator: "; ")
            rows.append([
                String(run.version), "\(run.recordedAt)", age(now.duration(since: run.recordedAt)), run.status.rawValue,
                run.timestamp.map { "\($0)" } ?? "-", String(run.recordsCollected), run.actor ?? "-",
                String(note.prefix(80)),
            ])
        }
        return aligned(rows)
    }

    /// The holder of a lease, its fencing token and when it ends.
    static func lease(_ lease: Lease, now: Timestamp) -> String {
        aligned([
            ["SOURCE", "HOLDER", "FENCING TOKEN", "EXPIRES", "IN"],
            [
                lease.sourceID.rawValue, lease.owner, String(lease.fencingToken), "\(lease.expiresAt)",
                age(now.duration(since: lease.expiresAt)),
            ],
        ])
    }

    /// "3h12m ago", "45s ago", "2d4h ago"; "in 5m" for the future.
    static func age(_ elapsed: Duration) -> String {
        let seconds = elapsed.components.seconds
        let total = abs(seconds)
        let (days, hours, minutes) = (total / 86_400, total % 86_400 / 3600, total % 3600 / 60)
        let text =
            days > 0
            ? "\(days)d\(hours)h" : hours > 0 ? "\(hours)h\(minutes)m" : minutes > 0 ? "\(minutes)m" : "\(total)s"
        return seconds < 0 ? "in \(text)" : "\(text) ago"
    }

    /// A cell as the terminal shows it: control characters (a line break, an escape sequence quoted from a feed's
    /// error text, which the storage keeps as sent) as U+FFFD, so that they can neither break the table nor drive
    /// the operator's terminal. The JSON output escapes them already.
    static func printable(_ text: String) -> String {
        func isControl(_ scalar: Unicode.Scalar) -> Bool { scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) }
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var shown = String.UnicodeScalarView()
        for scalar in text.unicodeScalars { shown.append(isControl(scalar) ? "\u{FFFD}" : scalar) }
        return String(shown)
    }

    private static func aligned(_ rows: [[String]]) -> String {
        let rows = rows.map { $0.map(printable) }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
