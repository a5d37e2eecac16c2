import Foundation
import ServiceSupport
import StorageClient
import Testing
import WatermarkCore

@testable import CollectionService

/// The offline demo that `make run-all` collects: its sources files parse, and its feeds go through the
/// directory collector whole (no file rejected, every record stored once, the mark at the newest record), with
/// documentation addresses only.
@Suite("Demo data")
struct DemoDataTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var feeds: URL { root.appendingPathComponent("demo/feeds") }

    static func feedFiles() throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: feeds, includingPropertiesForKeys: nil)
            .filter { ["json", "ndjson"].contains($0.pathExtension) }.sorted { $0.path < $1.path }
    }

    /// The records of a feed file as the directory collector reads them: NDJSON lines, a bundle's objects.
    static func records(of file: URL) throws -> [[String: Any]] {
        let data = try Data(contentsOf: file)
        if file.pathExtension == "ndjson" {
            return try data.split(separator: UInt8(ascii: "\n")).map {
                try #require(try JSONSerialization.jsonObject(with: Data($0)) as? [String: Any])
            }
        }
        let bundle = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return try #require(bundle["objects"] as? [[String: Any]])
    }

    @Test func theDemoSourcesFilesParseAndLookBackTenYears() throws {
        for name in ["sources.json", "sources.container.json"] {
            let sources = try SourcesFile.load(
                path: Self.root.appendingPathComponent("demo/config/\(name)").path, settings: Settings(environment: [:])
            )
            #expect(!sources.isEmpty, "\(name)")
            for source in sources {
                #expect(source.lookback >= .seconds(3650 * 86_400), "\(name): \(source.id)")
            }
        }
    }

    @Test func theDemoFeedsAreCollectedWholeByTheDirectoryCollector() async throws {
        let sources = try SourcesFile.load(
            path: Self.root.appendingPathComponent("demo/config/sources.json").path,
            settings: Settings(environment: [:]))
        let demo = try #require(sources.first { $0.id.rawValue == "demo-feeds" })
        guard case .directory(var settings) = demo.kind else {
            Issue.record("demo-feeds is not a directory source")
            return
        }
        let f = try RunnerFixture(clock: { Timestamp.now() })
        defer { removeTemporary(f.dir) }
        // A copy: the collector keeps its ledger beside the state, but the repository's files stay untouched.
        let inbox = f.dir + "/in"
        try FileManager.default.copyItem(atPath: Self.feeds.path, toPath: inbox)
        settings.path = inbox
        var source = demo
        source.kind = .directory(settings)
        let collector = DirectoryCollector(
            settings: settings, ledger: FileLedger(stateDirectory: f.dir + "/.state", sourceID: source.id))

        let report = await f.runner.run(source, collector: collector)

        let expected = try Self.feedFiles().flatMap { try Self.records(of: $0) }
        #expect(report.outcome == .success, "\(report.errorMessage ?? "")")
        #expect(report.rejectedFiles == 0)
        #expect(report.recordsCollected == Int64(expected.count) && !expected.isEmpty)
        let sink = NDJSONSink(dataDirectory: f.dir, sourceID: source.id)
        let stored = sink.allEntries()
        #expect(Set(stored.map(\.id)) == Set(expected.compactMap { $0["id"] as? String }))
        #expect(stored.count == expected.count)
        let newest = try expected.map { try Timestamp(rfc3339: try #require($0["modified"] as? String)) }.max()
        #expect(try await f.storage.getWatermark(sourceID: source.id)?.lastSuccessfulTimestamp == newest)
    }

    /// Documentation ranges (RFC 5737) and reserved example domains (RFC 2606) only: the demo ships to everyone.
    @Test func theDemoFeedsNameOnlyDocumentationAddresses() throws {
        let documentation = ["192.0.2.", "198.51.100.", "203.0.113."]
        let ipv4 = /(?:^|[^\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])/
        // A host name used as a value: in quotes or after "//".
        let host = /(?:"|\/\/)((?:[a-z0-9-]+\.)+[a-z]{2,})(?=["\/:])/.ignoresCase()
        for file in try Self.feedFiles() {
            let text = try String(contentsOf: file, encoding: .utf8)
            for match in text.matches(of: ipv4) {
                let ip = String(match.1)
                #expect(documentation.contains { ip.hasPrefix($0) }, "\(file.lastPathComponent): \(ip)")
            }
            for match in text.matches(of: host) {
                let name = match.1.lowercased()
                #expect(
                    ["example.com", "example.org", "example.net"].contains { name == $0 || name.hasSuffix("." + $0) },
                    "\(file.lastPathComponent): \(name)")
            }
        }
    }
}
