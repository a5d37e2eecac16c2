import Foundation
import Logging
import PostgresSupport
import ServiceSupport
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

@Suite("Configuration")
struct ConfigurationTests {
    func parse(_ json: String, env: [String: String] = [:]) throws(ConfigurationError) -> [SourceConfiguration] {
        try SourcesFile.parse(Data(json.utf8), settings: Settings(environment: env), baseDirectory: "/etc/collection")
    }

    func message(_ json: String, env: [String: String] = [:]) -> String {
        do {
            _ = try parse(json, env: env)
            return "no error"
        } catch {
            return error.message
        }
    }

    @Test func readsEveryTypeWithDefaultsAndCredentialsFromTheEnvironment() throws {
        let sources = try parse(
            """
            {"sources": [
              {"id": "mitre", "type": "taxii21", "api_root": "https://taxii.example.com/api1/",
               "collection_id": "c1", "username_env": "T_USER", "password_env": "T_PASS", "page_size": 50},
              {"id": "otx", "type": "otx", "api_key_env": "OTX_KEY", "interval_seconds": 600, "overlap_seconds": 300},
              {"id": "drop", "type": "directory", "path": "feeds", "enabled": false, "fallback_timestamp_field": null}
            ]}
            """, env: ["T_USER": "admin", "T_PASS": "Password0", "OTX_KEY": "k"])
        #expect(sources.map(\.id.rawValue) == ["mitre", "otx", "drop"])
        guard case .taxii21(let taxii) = sources[0].kind else { Issue.record("not taxii"); return }
        #expect(taxii.auth == .basic(username: "admin", password: Secret("Password0")))
        #expect(
            sources[0].pageSize == 50 && sources[0].lookback == .seconds(604_800)
                && sources[0].interval == .seconds(300))
        guard case .otx(let otx) = sources[1].kind else { Issue.record("not otx"); return }
        #expect(otx.baseURL == "https://otx.alienvault.com" && otx.apiKey.value == "k")
        #expect(sources[1].overlap == .seconds(300) && sources[1].interval == .seconds(600))
        guard case .directory(let directory) = sources[2].kind else { Issue.record("not directory"); return }
        #expect(directory.path == "feeds" && directory.fallbackTimestampField == nil)
        #expect(sources[2].enabled == false)
    }

    @Test func errorsNameTheSourceAndTheField() {
        #expect(
            message(#"{"sources":[{"id":"otx","type":"otx","api_key_env":"MISSING"}]}"#)
                == #"source "otx" field "api_key_env": environment variable MISSING is not set"#)
        #expect(
            message(#"{"sources":[{"id":"t","type":"taxii21","collection_id":"c"}]}"#)
                == #"source "t" field "api_root": required"#)
        #expect(
            message(#"{"sources":[{"id":"t","type":"taxii21","api_root":"ftp://x","collection_id":"c"}]}"#)
                .hasPrefix(#"source "t" field "api_root": "ftp://x" is not an http(s) URL"#))
        #expect(
            message(#"{"sources":[{"id":"d","type":"directory","path":"x","intervall_seconds":5}]}"#)
                == #"source "d" field "intervall_seconds": unknown field for a directory source"#)
        #expect(
            message(#"{"sources":[{"id":"d","type":"directory","path":"x","page_size":0}]}"#)
                == #"source "d" field "page_size": must be a whole number from 1 to 10000"#)
        #expect(
            message(#"{"sources":[{"id":"d","type":"ftp","path":"x"}]}"#)
                == #"source "d" field "type": "ftp" is not one of taxii21, otx, directory"#)
        #expect(
            message(#"{"sources":[{"id":"a/b","type":"directory","path":"x"}]}"#).hasPrefix(#"sources[0] field "id""#))
        #expect(
            message(#"{"sources":[{"id":"d","type":"directory","path":"x"},{"id":"d","type":"directory","path":"y"}]}"#)
                == #"source "d" field "id": used by more than one source"#)
        #expect(
            message(#"{"sources":[{"id":"d","type":"directory","path":"x","enabled":"yes"}]}"#)
                == #"source "d" field "enabled": must be true or false"#)
        #expect(message("not json").hasPrefix("the sources file is not valid JSON"))
        // A misspelled or misplaced top-level part is an error, not ignored.
        #expect(
            message(#"{"sources":[],"defaults":{"interval_seconds":60}}"#)
                == #"the sources file has an unknown field "defaults" (only "sources")"#)
        // A request timeout whose lease (twice it) the storage cannot grant would fail every run.
        #expect(
            message(#"{"sources":[{"id":"d","type":"directory","path":"x","timeout_seconds":43201}]}"#)
                == #"source "d" field "timeout_seconds": must be a whole number from 1 to 43200"#)
        // Credentials in a URL are refused, and never repeated in the message.
        let withCredentials = message(
            #"{"sources":[{"id":"t","type":"taxii21","api_root":"https://alice:s3cret@taxii.example/api1/","collection_id":"c"}]}"#
        )
        #expect(
            withCredentials.contains("must not hold credentials") && !withCredentials.contains("s3cret"),
            "\(withCredentials)")
        #expect(
            message(
                #"{"sources":[{"id":"t","type":"taxii21","api_root":"http://x","collection_id":"c","token_env":"A","username_env":"B"}]}"#
            )
            .contains("not both"))
    }

    @Test func theShippedExampleParses() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("config/sources.example.json").path
        let sources = try SourcesFile.load(
            path: path,
            settings: Settings(environment: ["OTX_API_KEY": "k", "TAXII_USERNAME": "u", "TAXII_PASSWORD": "p"])
        )
        #expect(sources.count >= 3)
        #expect(sources.compactMap(\.staleThresholdProblem).isEmpty)
        #expect(sources.allSatisfy { $0.cannotRun == nil })
        // Copied as is (config/README), without the credentials of the sources it ships disabled: it still loads.
        let bare = try SourcesFile.load(path: path, settings: Settings(environment: [:]))
        #expect(bare.count == sources.count)
        #expect(bare.filter(\.enabled).allSatisfy { $0.cannotRun == nil })
        // Its disabled TAXII and OTX sources are marked, naming what they lack.
        let unset = bare.filter { !$0.enabled }.compactMap(\.cannotRun).joined(separator: "; ")
        #expect(unset.contains("TAXII_USERNAME") && unset.contains("OTX_API_KEY"), "\(unset)")
    }

    /// A disabled source's credentials may be unset: it loads, marked as unable to run (a request to run it is
    /// refused, naming the variable); an enabled source's are required at start.
    @Test func aDisabledSourceLoadsWithoutItsCredentials() throws {
        func file(enabled: Bool) throws -> String {
            let path = try makeTemporaryDirectory() + "/sources.json"
            try
                #"{"sources":[{"id":"t","type":"taxii21","api_root":"http://x","collection_id":"c","username_env":"T_U","password_env":"T_P","enabled":\#(enabled)}]}"#
                .write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let disabled = try SourcesFile.load(
            path: try file(enabled: false), settings: Settings(environment: ["T_U": "u"]))
        #expect(disabled.first?.cannotRun == #"source "t" field "password_env": environment variable T_P is not set"#)
        #expect(throws: ConfigurationError.self) {
            try SourcesFile.load(path: try file(enabled: true), settings: Settings(environment: ["T_U": "u"]))
        }
    }

    /// `COLLECTION_API_TOKEN` is read as `STORAGE_API_TOKEN` is (one token, or named ones); blank is unset; a malformed
    /// list stops the start naming the variable, never echoing a token.
    @Test func theRunTokenIsReadLikeTheStoragesTokens() throws {
        #expect(try CollectionConfiguration(Settings(environment: [:])).apiTokens == nil)
        #expect(try CollectionConfiguration(Settings(environment: ["COLLECTION_API_TOKEN": " "])).apiTokens == nil)
        let named = try CollectionConfiguration(Settings(environment: ["COLLECTION_API_TOKEN": "ops:s3cret,ci:x"]))
        #expect(named.apiTokens?.name(of: "s3cret") == "ops")
        #expect(
            try CollectionConfiguration(Settings(environment: ["COLLECTION_API_TOKEN": "t0k"])).apiTokens?
                .name(of: "t0k") == "api")
        let refusal = #expect(throws: ConfigurationKeyError.self) {
            try CollectionConfiguration(Settings(environment: ["COLLECTION_API_TOKEN": "ops:s3cret,bad"]))
        }
        #expect(refusal?.key == "COLLECTION_API_TOKEN" && refusal.map { !"\($0)".contains("s3cret") } == true)
    }

    /// A stale threshold no longer than the interval plus its jitter shows a healthy source stale between runs: said
    /// at start-up (a daily source on the default two hours, a threshold inside the jitter), not for longer ones.
    @Test func aStaleThresholdShorterThanTheGapBetweenRunsIsNamed() throws {
        let json = #"""
            {"sources": [
              {"id": "daily", "type": "directory", "path": "/in", "interval_seconds": 86400},
              {"id": "jitter", "type": "directory", "path": "/in", "interval_seconds": 1000, "stale_after_seconds": 1100},
              {"id": "ok", "type": "directory", "path": "/in", "interval_seconds": 1000, "stale_after_seconds": 1101},
              {"id": "default", "type": "directory", "path": "/in"}
            ]}
            """#
        let problems = try parse(json).map(\.staleThresholdProblem)
        #expect(problems.map { $0 != nil } == [true, true, false, false])
        #expect(problems[0]?.contains("stale_after_seconds (7200)") == true)
        #expect(problems[0]?.contains("interval_seconds (86400)") == true)
    }

    /// A drop folder inside a source's sink folder (`DATA_DIR/<id>`: its day files would be read back as bad
    /// records and moved away) or inside `DATA_DIR/.state` stops the start, through `..` and symbolic links too; a
    /// folder beside them, or a sink folder when the sink is PostgreSQL, does not.
    @Test func aDropFolderWhereTheServiceWritesIsRefused() async throws {
        try await withTemporaryDirectory { data in
            try FileManager.default.createDirectory(atPath: data + "/inbox/2026", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: data + "/link", withDestinationPath: data + "/inbox")
            try FileManager.default.createSymbolicLink(atPath: data + "-link", withDestinationPath: data)
            defer { try? FileManager.default.removeItem(atPath: data + "-link") }
            func refusal(_ path: String, sink: String? = nil, dataDirectory: String? = nil) throws -> String? {
                let json = """
                    {"sources": [{"id": "inbox", "type": "directory", "path": "\(path)"},
                      {"id": "otx", "type": "otx", "api_key_env": "K"}]}
                    """
                var environment = ["DATA_DIR": dataDirectory ?? data]
                environment["SINK_URL"] = sink
                let configuration = try CollectionConfiguration(Settings(environment: environment))
                do {
                    try configuration.checkDropFolders(try parse(json, env: ["K": "k"]))
                    return nil
                } catch {
                    return error.message
                }
            }
            let own = try refusal(data + "/inbox")
            #expect(own?.contains(#"source "inbox" field "path""#) == true, "\(own ?? "accepted")")
            #expect(own?.contains(#"where the sink writes source "inbox""#) == true)
            #expect(try refusal(data + "/otx")?.contains(#"sink writes source "otx""#) == true)
            #expect(try refusal(data + "/inbox/2026") != nil)
            #expect(try refusal(data + "/drop/../inbox/") != nil)
            #expect(try refusal(data + "/link") != nil)
            // DATA_DIR through a link, its sink folder not made yet.
            #expect(try refusal(data + "/otx", dataDirectory: data + "-link/") != nil)
            #expect(try refusal(data + "-link/otx/new") != nil)
            #expect(try refusal(data + "/.state/drop")?.contains("state folder") == true)
            #expect(try refusal(data + "/drop/inbox") == nil)
            #expect(try refusal(data + "/inboxes") == nil)
            #expect(try refusal(data) == nil)
            #expect(try refusal(data + "/inbox", sink: "postgres://u@127.0.0.1:5432/sink") == nil)
            #expect(try refusal(data + "/.state", sink: "postgres://u@127.0.0.1:5432/sink") != nil)

            // One folder for two sources, however it is written; two folders, one inside the other, are two.
            func refusal(_ first: String, _ second: String, secondEnabled: Bool = true) throws -> String? {
                let json = """
                    {"sources": [{"id": "a", "type": "directory", "path": "\(first)"},
                      {"id": "b", "type": "directory", "path": "\(second)", "enabled": \(secondEnabled)}]}
                    """
                let configuration = try CollectionConfiguration(Settings(environment: ["DATA_DIR": data]))
                do {
                    try configuration.checkDropFolders(try parse(json, env: [:]))
                    return nil
                } catch {
                    return error.message
                }
            }
            let twice = try refusal(data + "/drop", data + "/drop/")
            #expect(twice?.contains(#"source "b" field "path""#) == true && twice?.contains(#"source "a""#) == true)
            #expect(try refusal(data + "/link", data + "/inbox/../inbox") != nil)
            #expect(try refusal(data + "/drop", data + "/drop/2026") == nil)
            #expect(try refusal(data + "/drop", data + "/drop", secondEnabled: false) == nil)
        }
    }

    @Test func serviceSettingsComeFromTheEnvironment() throws {
        let config = try CollectionConfiguration(environment: [
            "PORT": "8001", "DATA_DIR": "/data", "MAX_CONCURRENT_RUNS": "4", "INSTANCE_ID": "pod-1",
            "LOG_LEVEL": "DEBUG",
        ])
        #expect(config.port == 8001 && config.dataDirectory == "/data" && config.stateDirectory == "/data/.state")
        #expect(config.maxConcurrentRuns == 4 && config.instanceID == "pod-1" && config.logLevel == .debug)
        #expect(throws: ConfigurationKeyError.self) { try CollectionConfiguration(environment: ["PORT": "eighty"]) }
        #expect(throws: ConfigurationKeyError.self) { try CollectionConfiguration(environment: ["LOG_LEVEL": "loud"]) }
    }

    @Test func settingsLayFlagsOverTheEnvironmentAndTreatBlankAsUnset() throws {
        let settings = Settings(
            environment: ["PORT": "9000", "DATA_DIR": "  ", "HOST": " 10.0.0.1 ", "INSTANCE_ID": "env"],
            flags: ["INSTANCE_ID": "flag"])
        let config = try CollectionConfiguration(settings)
        #expect(config.port == 9000 && config.host == "10.0.0.1" && config.instanceID == "flag")
        #expect(config.dataDirectory == "./data/collection")  // blank: the default
        #expect(try CollectionConfiguration(environment: [:]).port == 8001)  // not the storage's 8000
        // A value under a secret-looking name is never repeated in the error.
        #expect {
            _ = try Settings(environment: ["FEED_TOKEN": "s3cr3t"]).int("FEED_TOKEN", default: 1, in: 0...9)
        } throws: { error in
            "\(error)" == "FEED_TOKEN <redacted> is invalid: expected a whole number from 0 to 9"
        }
    }

    /// An `INSTANCE_ID` the storage would refuse as a lease owner stops the start (every run would fail).
    @Test func anInstanceIDNoLeaseCanHaveIsRefused() throws {
        for bad in [String(repeating: "x", count: 257), "pod\u{7}1"] {
            #expect(throws: ConfigurationKeyError.self) {
                try CollectionConfiguration(environment: ["INSTANCE_ID": bad])
            }
        }
        #expect(
            try CollectionConfiguration(environment: ["INSTANCE_ID": String(repeating: "x", count: 256)]).instanceID
                .count == 256)
    }

    @Test func theLeaseOwnerIsStableAcrossRestartsAndRequireLeaseIsExplicit() throws {
        let defaults = try CollectionConfiguration(environment: [:])
        // The host name until the DATA_DIR's owner is resolved (theDefaultOwnerIsKeptPerDataDirectory), the same for
        // a restarted process (no pid in it), so it resumes its own live leases.
        let host = ProcessInfo.processInfo.hostName
        #expect(defaults.instanceID == host || host.hasPrefix(defaults.instanceID + "."), "\(defaults.instanceID)")
        #expect(!defaults.instanceID.hasSuffix("-\(ProcessInfo.processInfo.processIdentifier)"))
        #expect(defaults.instanceID == (try CollectionConfiguration(environment: [:])).instanceID)
        #expect(defaults.requireLease == false)
        #expect(try CollectionConfiguration(environment: ["REQUIRE_LEASE": "true"]).requireLease)
        #expect(try !CollectionConfiguration(environment: ["REQUIRE_LEASE": "false"]).requireLease)
        #expect(
            throws: ConfigurationKeyError(
                key: "REQUIRE_LEASE", message: "'maybe' is invalid: expected one of true, false, 1, 0, yes, no")
        ) {
            try CollectionConfiguration(environment: ["REQUIRE_LEASE": "maybe"])
        }
    }

    /// Without `INSTANCE_ID` the owner is the host name and six hex digits made once per `DATA_DIR` and kept in
    /// `.state/instance-id`: the same after a restart, another for another folder on the same host (which would
    /// otherwise be granted the first one's lease as a renewal); a damaged file gets a new id; a given `INSTANCE_ID`
    /// writes nothing.
    @Test func theDefaultOwnerIsKeptPerDataDirectory() async throws {
        try await withTemporaryDirectory { folder in
            func owner(_ data: String, _ environment: [String: String] = [:]) throws -> (
                String, CollectionConfiguration.InstanceIDOrigin
            ) {
                var configuration = try CollectionConfiguration(
                    Settings(environment: environment.merging(["DATA_DIR": data]) { $1 }))
                let origin = try configuration.resolveInstanceID()
                return (configuration.instanceID, origin)
            }
            let host = CollectionConfiguration.hostName()
            let (first, origin) = try owner(folder + "/a")
            #expect(origin == .made(replaced: false))
            #expect(first.hasPrefix(host + "-") && first.count == host.count + 7, "\(first)")
            #expect(first.dropFirst(host.count + 1).allSatisfy { $0.isHexDigit })
            let path = CollectionConfiguration.instanceIDPath(of: folder + "/a")
            #expect(try String(contentsOfFile: path, encoding: .utf8) == first.dropFirst(host.count + 1) + "\n")
            #expect(try owner(folder + "/a") == (first, .kept))
            let other = try owner(folder + "/b").0
            #expect(other != first && other.hasPrefix(host + "-"))

            try Data("pod\u{7}1".utf8).write(to: URL(fileURLWithPath: path))
            let (made, replaced) = try owner(folder + "/a")
            #expect(replaced == .made(replaced: true) && made != first && WatermarkRules.isValidOwner(made))
            #expect(try owner(folder + "/a") == (made, .kept))

            #expect(try owner(folder + "/c", ["INSTANCE_ID": "pod-7"]) == ("pod-7", .given))
            #expect(!FileManager.default.fileExists(atPath: CollectionConfiguration.instanceIDPath(of: folder + "/c")))
        }
    }

    @Test func leaseTTLAndRenewalAreConfigurableWithDefaultsForSeveralReplicas() throws {
        let defaults = try CollectionConfiguration(environment: [:])
        #expect(defaults.leaseTTL == .seconds(60) && defaults.leaseRenewal == .seconds(20))
        let short = try CollectionConfiguration(environment: ["LEASE_TTL_SECONDS": "15"])
        #expect(short.leaseTTL == .seconds(15) && short.leaseRenewal == .seconds(5))
        let set = try CollectionConfiguration(environment: ["LEASE_TTL_SECONDS": "30", "LEASE_RENEW_SECONDS": "29"])
        #expect(set.leaseRenewal == .seconds(29))
        for bad in [["LEASE_TTL_SECONDS": "2"], ["LEASE_TTL_SECONDS": "30", "LEASE_RENEW_SECONDS": "30"]] {
            #expect(throws: ConfigurationKeyError.self) { try CollectionConfiguration(environment: bad) }
        }
        // A run's lease is never shorter than two of its source's timeouts.
        var source = SourceConfiguration(id: try SourceID("slow"), kind: .directory(DirectorySettings(path: "/tmp")))
        source.timeout = .seconds(45)
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        var runner = f.runner
        runner.leaseTTL = .seconds(15)
        #expect(runner.ttl(for: source) == .seconds(90))
        runner.leaseTTL = .seconds(120)
        #expect(runner.ttl(for: source) == .seconds(120))
    }

    @Test func sinkURLSelectsTheSharedPostgresSinkAndABadOneStopsTheStart() throws {
        #expect(try CollectionConfiguration(environment: [:]).sinkURL == nil)
        let url = try #require(
            try CollectionConfiguration(environment: ["SINK_URL": "postgresql://c:pw@db:5433/records?sslmode=require"])
                .sinkURL)
        #expect(url.redacted == "postgres://c@db:5433/records" && url.sslMode == .require)
        for bad in ["mysql://c:pw@db/records", "postgres://c:pw@db/records?sslmode=maybe", "postgres://c:pw@db"] {
            do {
                _ = try CollectionConfiguration(environment: ["SINK_URL": bad])
                Issue.record("\(bad) was accepted")
            } catch {
                #expect(error.key == "SINK_URL" && !error.description.contains("pw@"), "\(error)")
            }
        }
    }

    @Test func taxiiVersionsAndCheckpointsAreConfigurable() throws {
        let json = #"""
            {"sources": [
              {"id": "t1", "type": "taxii21", "api_root": "https://taxii.example/api1/", "collection_id": "c"},
              {"id": "t2", "type": "taxii21", "api_root": "https://taxii.example/api1/", "collection_id": "c",
               "versions": "last", "checkpoint_pages": 0, "checkpoint_seconds": 120}
            ]}
            """#
        let sources = try SourcesFile.parse(Data(json.utf8), settings: Settings(environment: [:]))
        guard case .taxii21(let first) = sources[0].kind, case .taxii21(let second) = sources[1].kind else {
            Issue.record("not TAXII sources")
            return
        }
        #expect(first.versions == .all && second.versions == .last)
        #expect(sources[0].checkpointPages == 10 && sources[0].checkpointInterval == .seconds(30))
        #expect(sources[0].overlap == .seconds(60), "TAXII re-reads a minute by default")
        #expect(sources[1].checkpointPages == 0 && sources[1].checkpointInterval == .seconds(120))
        let bad = json.replacingOccurrences(of: #""versions": "last""#, with: #""versions": "newest""#)
        #expect(throws: ConfigurationError(#"source "t2" field "versions": "newest" is not one of all, last"#)) {
            try SourcesFile.parse(Data(bad.utf8), settings: Settings(environment: [:]))
        }
    }

    @Test func naiveAndOffsetTimestampsParse() throws {
        #expect(try Timestamp(rfc3339: "2024-01-01T12:00:00.123000", assumeUTC: true) == ts("2024-01-01T12:00:00.123Z"))
        #expect(try Timestamp(rfc3339: "2024-01-01T12:00:00", assumeUTC: true) == ts("2024-01-01T12:00:00Z"))
        #expect(try Timestamp(rfc3339: "2024-01-01 12:00:00", assumeUTC: true) == ts("2024-01-01T12:00:00Z"))
        #expect(try Timestamp(rfc3339: "2024-01-01T12:00:00+02:00", assumeUTC: true) == ts("2024-01-01T10:00:00Z"))
        #expect(throws: TimestampError.self) { try Timestamp(rfc3339: "yesterday", assumeUTC: true) }
    }

    /// OTX stamps a pulse's `modified` when its save begins and shows it when the save commits: without an
    /// overlap, a run that read later pulses meanwhile moved the watermark past it for good. Five minutes are re-read
    /// unless the file says otherwise; a drop folder re-reads nothing.
    @Test func anOTXSourceReReadsFiveMinutesByDefault() throws {
        let json = #"""
            {"sources": [
              {"id": "o1", "type": "otx", "api_key_env": "K"},
              {"id": "o2", "type": "otx", "api_key_env": "K", "overlap_seconds": 0},
              {"id": "d", "type": "directory", "path": "/tmp/in"}
            ]}
            """#
        let sources = try SourcesFile.parse(Data(json.utf8), settings: Settings(environment: ["K": "k"]))
        #expect(sources.map(\.overlap) == [.seconds(300), .zero, .zero])
    }
}
