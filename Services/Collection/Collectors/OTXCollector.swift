import Foundation
import NIOHTTP1
import WatermarkCore

/// AlienVault OTX subscribed pulses: `/api/v1/pulses/subscribed?modified_since=&limit=`, following `next`.
///
/// The mark is the pulse's `modified` (naive UTC, with or without a fraction). `modified_since` is inclusive, so
/// the pulse at the boundary comes back on the next run and is dropped by (id, modified).
struct OTXCollector: Collector {
    let settings: OTXSettings
    let pageSize: Int
    let http: SourceHTTPClient

    var baseURL: String {
        settings.baseURL.hasSuffix("/") ? String(settings.baseURL.dropLast()) : settings.baseURL
    }

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        let url: String
        if let cursor {
            // `next` is a full URL; the API key is only ever sent to the configured host.
            guard Self.host(of: cursor) == Self.host(of: baseURL) else {
                throw .malformed("OTX \"next\" points to another host (\(SourceHTTPClient.displayURL(cursor)))")
            }
            url = cursor
        } else {
            // OTX's clock is naive UTC: send the instant without an offset, truncated to microseconds.
            let naive = String(since.formatted(fractionDigits: 6).dropLast())
            url =
                baseURL + "/api/v1/pulses/subscribed?modified_since="
                + TAXII21Collector.percentEncode(naive) + "&limit=\(pageSize)"
        }
        var headers = HTTPHeaders()
        headers.add(name: "X-OTX-API-KEY", value: settings.apiKey.value)
        headers.add(name: "Accept", value: "application/json")
        let response = try await http.get(url, headers: headers)
        return try await Self.parse(response.body, url: SourceHTTPClient.displayURL(url))
    }

    static func parse(_ body: Data, url: String) async throws(CollectorError) -> CollectorPage {
        let what = "the OTX answer from \(url)"
        let envelope = try JSONRecords.envelope(body, what: what)
        let pulses = try JSONRecords.records("results", of: body, envelope: envelope, what: what)
        let fields = try await JSONRecords.fields(
            of: pulses, wanted: ["id", "modified"], label: { "pulse \($0) from \(url)" })
        var records: [CollectedRecord] = []
        for (index, pulse) in fields.enumerated() {
            guard let id = pulse.text("id"), !id.isEmpty else {
                throw .malformed("pulse \(index) from \(url) has no \"id\"")
            }
            guard let text = pulse.string("modified") else {
                throw .malformed("pulse \(id) from \(url) has no \"modified\"")
            }
            records.append(
                try CollectedRecord(
                    id: id, stamp: text, json: JSONRecords.oneLine(pulses[index]),
                    field: "pulse \(id) from \(url): \"modified\""))
        }
        let next: String? =
            if let range = envelope["next"], case .string(let text) = JSONRecords.value(body[range]), !text.isEmpty {
                text
            } else {
                nil
            }
        return CollectorPage(records: records, next: next)
    }

    /// `scheme://host:port` of a URL, lower-cased.
    static func host(of url: String) -> String? {
        guard let components = URLComponents(string: url), let host = components.host else { return nil }
        return
            "\(components.scheme?.lowercased() ?? "")://\(host.lowercased()):\(components.port.map(String.init) ?? "")"
    }
}
