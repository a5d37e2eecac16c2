import AsyncHTTPClient
import WatermarkCore

/// One configured source, validated: every value here was checked at start-up, credentials included.
struct SourceConfiguration: Sendable {
    var id: SourceID
    var kind: SourceKind
    var enabled: Bool = true
    /// Why the source cannot run (a disabled source whose credentials' variables are not set): a request to run it is
    /// refused with this.
    var cannotRun: String?
    /// Time between two scheduled runs (plus jitter).
    var interval: Duration = .seconds(300)
    /// How far back the first run (no watermark yet) starts.
    var lookback: Duration = .seconds(7 * 86_400)
    var pageSize: Int = 100
    /// How far before the watermark each run starts again, for sources whose filter or clock is coarse;
    /// records re-read inside the window are dropped by (id, version).
    var overlap: Duration = .zero
    /// Watermark age after which the source is reported stale.
    var staleAfter: Duration = .seconds(7200)
    /// Bound of one request to the source.
    var timeout: Duration = .seconds(30)
    /// A long run moves the watermark after this many pages (0: only at the end of the run) ...
    var checkpointPages: Int = 10
    /// ... or once this much time passed since its last checkpoint (zero: never by time), whichever comes first,
    /// so a crash costs at most that much re-reading. Only for sources whose pages say where no record of an
    /// instant is left to come (TAXII); a drop folder records each file as it is written instead.
    var checkpointInterval: Duration = .seconds(30)

    var typeName: String { kind.typeName }

    /// Why the stale threshold cannot work, when it is no longer than the time between two runs (the interval plus
    /// its jitter at most): the source would be reported stale, and its alert fire, between every two healthy runs
    /// (a daily source on the default two hours: 22 hours a day). Logged at start-up; the file is still taken.
    var staleThresholdProblem: String? {
        let longestGap = interval.secondsDouble * (1 + CollectionScheduler.Configuration().jitterFraction)
        guard staleAfter.secondsDouble <= longestGap else { return nil }
        return "stale_after_seconds (\(staleAfter.components.seconds)) is not longer than interval_seconds "
            + "(\(interval.components.seconds)) plus its jitter: the source shows stale between healthy runs"
    }

    /// The default overlap of a TAXII source. Servers stamp `date_added` when a request starts and may make the
    /// objects visible later, after a reader already paged past that instant: medallion stamps every object of a
    /// POSTed bundle with the request's time and inserts them one by one, so a bundle of thousands stays partly
    /// invisible for tens of seconds while another producer's later objects are read, and the watermark passes it.
    /// Re-reading a minute (dropped by (id, version)) closes that window; five seconds did not.
    static let taxiiOverlap: Duration = .seconds(60)

    /// The default overlap of an OTX source. A pulse's `modified` is stamped when its save begins, and a pulse with
    /// thousands of indicators becomes visible only when that save commits, after a run may have read pulses
    /// stamped later and moved the watermark past it: `modified_since` would never return it. Five minutes re-read
    /// each run (dropped by (id, modified)) closes that window.
    static let otxOverlap: Duration = .seconds(300)
}

/// The type-specific part of a source.
enum SourceKind: Sendable {
    case taxii21(TAXIISettings)
    case otx(OTXSettings)
    case directory(DirectorySettings)

    var typeName: String {
        switch self {
        case .taxii21: "taxii21"
        case .otx: "otx"
        case .directory: "directory"
        }
    }
}

/// A TAXII 2.1 collection, addressed without discovery.
struct TAXIISettings: Sendable {
    /// The API root URL, e.g. `https://taxii.example.com/api1/` (a trailing slash is added if missing).
    var apiRoot: String
    var collectionID: String
    var auth: SourceAuth = .none
    /// Which versions of each object to ask for (`match[version]`).
    var versions: TAXIIVersions = .all
}

/// `match[version]`: every version of an object (the platform keeps each as its own record) or the newest.
enum TAXIIVersions: String, Sendable {
    /// `match[version]=all`: an object revised twice between two runs arrives three times, once per version.
    case all
    /// The server's default (`last`): superseded versions are never seen.
    case last
}

/// AlienVault OTX subscribed pulses.
struct OTXSettings: Sendable {
    var baseURL: String = "https://otx.alienvault.com"
    var apiKey: Secret
}

/// A local drop folder of `.json` / `.ndjson` files.
struct DirectorySettings: Sendable {
    var path: String
    /// The record field holding its timestamp (RFC 3339; naive values count as UTC).
    var timestampField: String = "modified"
    /// Used when `timestampField` is absent, e.g. STIX objects that are never modified.
    var fallbackTimestampField: String? = "created"
    var idField: String = "id"
}

/// Credentials for an HTTP source; only ever read from environment variables.
enum SourceAuth: Sendable, Equatable {
    case none
    case basic(username: String, password: Secret)
    case bearer(Secret)

    /// The `Authorization` header value.
    var headerValue: String? {
        switch self {
        case .none: return nil
        case .basic(let username, let password):
            return HTTPClient.Authorization.basic(username: username, password: password.value).headerValue
        case .bearer(let token): return HTTPClient.Authorization.bearer(tokens: token.value).headerValue
        }
    }
}

/// A credential that never prints itself, so it cannot end up in a log line or an error message.
struct Secret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    let value: String
    init(_ value: String) { self.value = value }
    var description: String { "<redacted>" }
    var debugDescription: String { "<redacted>" }
}
