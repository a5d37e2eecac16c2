import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// OASIS medallion (real TAXII 2.1 server) started by `scripts/medallion/start.sh` on a free port.
final class MedallionServer: Sendable {
    static let collectionID = "4f1c9a52-7d2e-4c1b-9a57-2f6f0d1c3e01"
    let port: Int
    let process: ServiceProcess
    let workDirectory: TemporaryDirectory

    var apiRoot: String { Self.apiRoot(port: port) }
    var objectsURL: String { Self.objectsURL(port: port) }
    static func apiRoot(port: Int) -> String { "http://127.0.0.1:\(port)/api1/" }
    static func objectsURL(port: Int) -> String { apiRoot(port: port) + "collections/\(collectionID)/objects/" }

    /// Starts it and waits until the collection answers (the first start installs medallion: up to minutes).
    ///
    /// The port is free when `freePort()` returns but medallion binds it a moment later, and a process started
    /// meanwhile (tests run in parallel) may take it first: medallion then exits with "Address already in use"
    /// (seen once in CI), and it is started again on another port, up to three times. `ports` gives each try's port.
    init(ports: () throws -> Int = freePort) async throws {
        var attempt = 1
        while true {
            let port = try ports()
            let workDirectory = try TemporaryDirectory()
            let process = try ServiceProcess(
                "/bin/bash",
                arguments: [
                    repositoryRoot.appendingPathComponent("scripts/medallion/start.sh").path, "\(port)",
                    workDirectory.path,
                ],
                environment: ["MEDALLION_COLLECTION_ID": Self.collectionID]
            )
            let objectsURL = Self.objectsURL(port: port)
            do {
                try await waitUntil("medallion to answer", timeout: .seconds(300), every: .milliseconds(200)) {
                    guard process.isRunning else {
                        throw ProcessFailure("medallion exited before answering (is PyPI reachable?):\n\(process.log)")
                    }
                    return (try? await Self.get(objectsURL)).map { $0.status == 200 } ?? false
                }
                (self.port, self.process, self.workDirectory) = (port, process, workDirectory)
                return
            } catch {
                process.signal(SIGKILL)
                workDirectory.remove()
                guard attempt < 3, process.log.contains("Address already in use") else { throw error }
                attempt += 1
            }
        }
    }

    func stop() async {
        process.signal(SIGTERM)
        _ = try? await process.waitForExit(timeout: .seconds(10))
        workDirectory.remove()
    }

    /// Adds STIX objects with a TAXII POST; returns medallion's status resource.
    func add(_ objects: [[String: Any]]) async throws {
        let body = try JSONSerialization.data(withJSONObject: ["objects": objects])
        var request = HTTPClientRequest(url: objectsURL)
        request.method = .POST
        request.headers.add(name: "Authorization", value: Self.authorization)
        request.headers.add(name: "Accept", value: "application/taxii+json;version=2.1")
        request.headers.add(name: "Content-Type", value: "application/taxii+json;version=2.1")
        request.body = .bytes(ByteBuffer(data: body))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        guard (200..<300).contains(response.status.code), text.contains("\"failure_count\": 0") else {
            throw ProcessFailure("medallion refused the objects: \(response.status) \(text)")
        }
    }

    static let authorization = "Basic " + Data("admin:Password0".utf8).base64EncodedString()

    /// One entry of the collection's manifest: a version of an object and when the server added it.
    struct ManifestEntry: Hashable {
        var id: String
        var version: String
        var dateAdded: String
    }

    /// Every version of every object the server holds (the manifest with `match[version]=all`, all pages).
    func manifest() async throws -> [ManifestEntry] {
        let base = apiRoot + "collections/\(Self.collectionID)/manifest/?match%5Bversion%5D=all&limit=100"
        var entries: [ManifestEntry] = []
        var next: String?
        repeat {
            let reply = try await Self.get(base + (next.map { "&next=\($0)" } ?? ""))
            guard reply.status == 200 else { throw ProcessFailure("manifest: HTTP \(reply.status) \(reply.text)") }
            let object = try reply.json()
            for item in object["objects"] as? [[String: Any]] ?? [] {
                entries.append(
                    ManifestEntry(
                        id: item["id"] as? String ?? "", version: item["version"] as? String ?? "",
                        dateAdded: item["date_added"] as? String ?? ""))
            }
            next = (object["more"] as? Bool == true) ? object["next"] as? String : nil
        } while next != nil
        return entries
    }

    private static func get(_ url: String) async throws -> TestHTTP.Reply {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Authorization", value: Self.authorization)
        request.headers.add(name: "Accept", value: "application/taxii+json;version=2.1")
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(2))
        let body = try await response.body.collect(upTo: 1 << 20)
        return TestHTTP.Reply(status: Int(response.status.code), headers: response.headers, body: Data(buffer: body))
    }
}

/// Runs `body` with a started medallion, stopped afterwards, also when `body` throws.
func withMedallion(_ body: (MedallionServer) async throws -> Void) async throws {
    let medallion = try await MedallionServer()
    do {
        try await body(medallion)
    } catch {
        await medallion.stop()
        throw error
    }
    await medallion.stop()
}

/// A STIX 2.1 indicator with a fixed id.
func indicator(_ number: Int, modified: String = "2026-11-26T10:00:00.000Z") -> [String: Any] {
    let id = String(format: "indicator--%08d-0000-4000-8000-000000000000", number)
    return [
        "type": "indicator", "spec_version": "2.1", "id": id, "created": modified, "modified": modified,
        "name": "test indicator \(number)", "pattern": "[ipv4-addr:value = '192.0.2.\(number % 250)']",
        "pattern_type": "stix", "valid_from": "2026-11-26T10:00:00Z",
    ]
}

/// One `collection-service` setup: a data folder and a sources file; runs `--once` or serves.
struct CollectionSetup {
    let directory: TemporaryDirectory
    var sourcesPath: String { directory.path + "/sources.json" }
    var dataPath: String { directory.path + "/data" }

    init(sourcesJSON: String) throws {
        directory = try TemporaryDirectory()
        try sourcesJSON.write(toFile: directory.path + "/sources.json", atomically: true, encoding: .utf8)
    }

    /// Creates the drop folder `name` in the setup's folder and writes a sources file with one `directory`
    /// source of that id reading it (`extra` adds fields: `"interval_seconds": 3600`); returns the folder.
    static func dropFolder(_ name: String, in setup: CollectionSetup, extra: String = "") throws -> String {
        let folder = setup.directory.path + "/" + name
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try
            #"{"sources": [{"id": "\#(name)", "type": "directory", "path": "\#(folder)"\#(extra.isEmpty ? "" : ", " + extra)}]}"#
            .write(toFile: setup.sourcesPath, atomically: true, encoding: .utf8)
        return folder
    }

    func environment(storageURL: String?) -> [String: String] {
        var env = [
            "COLLECTION_CONFIG": sourcesPath, "DATA_DIR": dataPath, "PORT": "0", "HOST": "127.0.0.1",
            "TAXII_USERNAME": "admin", "TAXII_PASSWORD": "Password0", "INSTANCE_ID": "integration-test",
            "STORAGE_TIMEOUT_SECONDS": "2", "ENVIRONMENT": "development",
        ]
        env["STORAGE_SERVICE_URL"] = storageURL ?? ""
        return env
    }

    /// Starts `collection-service --once`; `extra` is added to (or, empty, removes from) its environment.
    func startOnce(storageURL: String?, extra: [String: String] = [:]) throws -> ServiceProcess {
        let binary = ServiceProcess.binDirectory.appendingPathComponent("collection-service")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw ProcessFailure("collection-service is not built at \(binary.path) (run swift build first)")
        }
        return try ServiceProcess(
            binary.path, arguments: ["--once"],
            environment: environment(storageURL: storageURL).merging(extra) { $1 }
        )
    }

    /// Runs `collection-service --once` to the end; returns its exit status and output.
    func runOnce(storageURL: String?, timeout: Duration = .seconds(90)) async throws -> (status: Int32, log: String) {
        let process = try startOnce(storageURL: storageURL)
        let status = try await process.waitForExit(timeout: timeout)
        return (status, process.log)
    }

    /// Every line of the sink of `source` that is complete JSON, in file order, duplicates included; a last
    /// line without its newline counts too (what any reader of the files would see; the service itself cuts
    /// such a torn line before its next append).
    func sinkLines(_ source: String) throws -> [[String: Any]] {
        let folder = dataPath + "/" + source
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter {
            $0.hasSuffix(".ndjson")
        }.sorted()
        var lines: [[String: Any]] = []
        for name in names {
            let data = try Data(contentsOf: URL(fileURLWithPath: folder + "/" + name))
            for line in data.split(separator: UInt8(ascii: "\n")) {
                if let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] {
                    lines.append(object)
                }
            }
        }
        return lines
    }

    /// The ids in the sink of `source`, in file order, duplicates included.
    func sinkIDs(_ source: String) throws -> [String] {
        try sinkLines(source).compactMap { $0["id"] as? String }
    }

    /// The `id@version` of every record in the sink of `source`, in file order, duplicates included.
    func sinkKeys(_ source: String) throws -> [String] {
        try sinkLines(source).compactMap { line in
            guard let id = line["id"] as? String, let version = line["version"] as? String else { return nil }
            return id + "@" + version
        }
    }

    func remove() { directory.remove() }
}

/// A sources file with one TAXII source `medallion` on `medallion`; `extra` adds fields (`"a": 1, "b": 2`).
func taxiiSourcesJSON(_ medallion: MedallionServer, pageSize: Int, extra: String = "") -> String {
    """
    {"sources": [{"id": "medallion", "type": "taxii21", "api_root": "\(medallion.apiRoot)",
      "collection_id": "\(MedallionServer.collectionID)", "username_env": "TAXII_USERNAME",
      "password_env": "TAXII_PASSWORD", "page_size": \(pageSize), "timeout_seconds": 10\(extra.isEmpty ? "" : ", " + extra)}]}
    """
}
