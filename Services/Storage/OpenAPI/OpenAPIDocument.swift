/// The OpenAPI 3.1 description of the storage service API, served at `GET /openapi.yaml`.
///
/// It lives in a string so the binary serves it without resource bundles. `OpenAPITests` fails when a
/// route exists that this document does not describe, or the reverse, and `scripts/schemathesis.sh`
/// fuzzes the running service against it: edit the two together.
///
/// The served document says what the running configuration does: a template line that ends in
/// `  # when: CONDITION` is kept (without the marker) only when the condition holds, so with no token
/// configured there is no security requirement and no 401, and 403 appears only with a read-only token.
enum OpenAPIDocument {
    /// The media type the document is served with.
    static let contentType = "application/yaml"

    /// What the served document depends on.
    struct Variant: Equatable, Sendable {
        /// `STORAGE_API_TOKEN` is set: bearer auth is required (401 without it).
        var authentication: Bool
        /// `STORAGE_READ_TOKEN` is set too: writes with it are 403.
        var readOnlyToken: Bool

        init(authentication: Bool, readOnlyToken: Bool) {
            self.authentication = authentication
            self.readOnlyToken = authentication && readOnlyToken
        }

        init(_ configuration: StorageConfiguration) {
            self.init(authentication: configuration.apiToken != nil, readOnlyToken: configuration.readToken != nil)
        }

        /// Whether a template line marked `# when: condition` belongs to this variant.
        func includes(_ condition: Substring) -> Bool {
            switch condition {
            case "auth": authentication
            case "no-auth": !authentication
            case "read-token": readOnlyToken
            case "api-token-only": authentication && !readOnlyToken
            default: preconditionFailure("unknown condition '\(condition)' in the OpenAPI template")
            }
        }
    }

    /// The document for `variant`: the template with its conditional lines resolved.
    static func yaml(for variant: Variant) -> String {
        var lines: [Substring] = []
        for line in template.split(separator: "\n", omittingEmptySubsequences: false) {
            guard let marker = line.firstRange(of: "  # when: ") else {
                lines.append(line)
                continue
            }
            if variant.includes(line[marker.upperBound...]) { lines.append(line[..<marker.lowerBound]) }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every variant in one text; `yaml(for:)` resolves it.
    static let template = #"""
        openapi: 3.1.0
        info:
          title: Watermark Storage Service
          version: 1.0.0
          description: >-
            Per data source, the instant up to which data was collected successfully. HTTP/1.1 + JSON on a
            SQLite file. Every error is {"error": {"code", "message"}}. A 2xx answer to a write means the write
            is durable on disk. Unknown methods on a known path are 405 with an Allow header.
            Authentication: every call but /health, /metrics and /openapi.yaml needs a bearer token.  # when: auth
            Authentication: none; this service runs without STORAGE_API_TOKEN and accepts requests without  # when: no-auth
            authentication (set STORAGE_API_TOKEN to require a bearer token).  # when: no-auth
        servers:
          - url: /
        security:  # when: auth
          - bearer: []  # when: auth
        security: []  # when: no-auth
        tags:
          - name: system
          - name: watermarks
          - name: leases
        paths:
          /health:
            get:
              operationId: getHealth
              tags: [system]
              summary: Whether the database can be used (never needs a token)
              security: []
              responses:
                "200":
                  description: Healthy
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Health"}
                "503":
                  description: The database cannot be used
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Health"}
          /status:
            get:
              operationId: getStatus
              tags: [system]
              summary: Version, uptime, database and watermark counts
              responses:
                "200":
                  description: The service's status
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Status"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "503": {$ref: "#/components/responses/Unavailable"}
          /metrics:
            get:
              operationId: getMetrics
              tags: [system]
              summary: Prometheus text format (never needs a token; counts only, no data)
              security: []
              responses:
                "200":
                  description: Metrics
                  content:
                    text/plain:
                      schema: {type: string}
          /openapi.yaml:
            get:
              operationId: getOpenAPIDocument
              tags: [system]
              summary: This document (never needs a token)
              security: []
              responses:
                "200":
                  description: The OpenAPI document
                  content:
                    application/yaml:
                      schema: {type: string}
          /api/v1/watermarks:
            get:
              operationId: listWatermarks
              tags: [watermarks]
              summary: Watermarks sorted by source_id, a page at a time
              parameters:
                - name: limit
                  in: query
                  schema: {type: integer, minimum: 1, maximum: 1000, default: 100}
                - name: cursor
                  in: query
                  description: The next_cursor of the previous page
                  schema: {$ref: "#/components/schemas/SourceID"}
                - name: status
                  in: query
                  schema: {$ref: "#/components/schemas/RunStatus"}
                - name: stale_after_seconds
                  in: query
                  description: Only sources whose last success is older than this, or that never succeeded
                  schema: {type: integer, minimum: 0, maximum: 3153600000}
              responses:
                "200":
                  description: One page
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/WatermarkPage"}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "503": {$ref: "#/components/responses/Unavailable"}
          /api/v1/watermarks/{source_id}:
            parameters:
              - $ref: "#/components/parameters/SourceID"
            get:
              operationId: getWatermark
              tags: [watermarks]
              summary: A source's watermark; 404 before its first update
              responses:
                "200":
                  description: The watermark
                  headers:
                    ETag: {$ref: "#/components/headers/ETag"}
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Watermark"}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "404": {$ref: "#/components/responses/NotFound"}
                "503": {$ref: "#/components/responses/Unavailable"}
            put:
              operationId: putWatermark
              tags: [watermarks]
              summary: Record a run; 201 when it creates the source, 200 when it updates it
              parameters:
                - name: force
                  in: query
                  description: Accept a success older than the stored one (deliberate backfill)
                  schema: {$ref: "#/components/schemas/BooleanFlag"}
                - $ref: "#/components/parameters/IfMatch"
                - name: If-None-Match
                  in: header
                  description: "'*': create only (412 when the source exists)"
                  schema: {type: string, enum: ["*"]}
                - $ref: "#/components/parameters/LeaseToken"
                - name: Idempotency-Key
                  in: header
                  description: A retried request with the same key and body returns the first answer, applied once
                  schema: {type: string, pattern: "^[!-~]{1,255}$"}
              requestBody:
                required: true
                content:
                  application/json:
                    schema: {$ref: "#/components/schemas/WatermarkUpdate"}
              responses:
                "200":
                  description: Updated
                  headers:
                    ETag: {$ref: "#/components/headers/ETag"}
                    Idempotent-Replayed: {$ref: "#/components/headers/IdempotentReplayed"}
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Watermark"}
                  links:
                    GetWatermark: {$ref: "#/components/links/GetWatermark"}
                    GetWatermarkHistory: {$ref: "#/components/links/GetWatermarkHistory"}
                    PutWatermarkIfMatch: {$ref: "#/components/links/PutWatermarkIfMatch"}
                    DeleteWatermarkIfMatch: {$ref: "#/components/links/DeleteWatermarkIfMatch"}
                    AcquireLease: {$ref: "#/components/links/AcquireLease"}
                "201":
                  description: Created
                  headers:
                    ETag: {$ref: "#/components/headers/ETag"}
                    Idempotent-Replayed: {$ref: "#/components/headers/IdempotentReplayed"}
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Watermark"}
                  links:
                    GetWatermark: {$ref: "#/components/links/GetWatermark"}
                    GetWatermarkHistory: {$ref: "#/components/links/GetWatermarkHistory"}
                    PutWatermarkIfMatch: {$ref: "#/components/links/PutWatermarkIfMatch"}
                    DeleteWatermarkIfMatch: {$ref: "#/components/links/DeleteWatermarkIfMatch"}
                    AcquireLease: {$ref: "#/components/links/AcquireLease"}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "403": {$ref: "#/components/responses/Forbidden"}  # when: read-token
                "409": {$ref: "#/components/responses/Conflict"}
                "412": {$ref: "#/components/responses/PreconditionFailed"}
                "413": {$ref: "#/components/responses/PayloadTooLarge"}
                "415": {$ref: "#/components/responses/UnsupportedMediaType"}
                "503": {$ref: "#/components/responses/Unavailable"}
            delete:
              operationId: deleteWatermark
              tags: [watermarks]
              summary: Reset a source (its next run starts from the default lookback)
              description: >-
                Afterwards the source answers like one never seen (GET and its history 404) until its next update;
                its runs are kept and its versions go on, so the history then shows the runs from before the reset.
              parameters:
                - $ref: "#/components/parameters/IfMatch"
                - $ref: "#/components/parameters/LeaseToken"
              responses:
                "204": {description: Deleted}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "403": {$ref: "#/components/responses/Forbidden"}  # when: read-token
                "404": {$ref: "#/components/responses/NotFound"}
                "409": {$ref: "#/components/responses/Conflict"}
                "412": {$ref: "#/components/responses/PreconditionFailed"}
                "503": {$ref: "#/components/responses/Unavailable"}
          /api/v1/watermarks/{source_id}/history:
            parameters:
              - $ref: "#/components/parameters/SourceID"
            get:
              operationId: getWatermarkHistory
              tags: [watermarks]
              summary: Every accepted update, newest first; 404 while the source has no watermark (never updated, or reset)
              parameters:
                - name: limit
                  in: query
                  schema: {type: integer, minimum: 1, maximum: 1000, default: 50}
              responses:
                "200":
                  description: The runs
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/History"}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "404": {$ref: "#/components/responses/NotFound"}
                "503": {$ref: "#/components/responses/Unavailable"}
          /api/v1/watermarks/{source_id}/lease:
            parameters:
              - $ref: "#/components/parameters/SourceID"
            post:
              operationId: acquireLease
              tags: [leases]
              summary: Take or renew the source's lease (one collector per source)
              requestBody:
                required: true
                content:
                  application/json:
                    schema: {$ref: "#/components/schemas/LeaseRequest"}
              responses:
                "200":
                  description: Granted or renewed
                  content:
                    application/json:
                      schema: {$ref: "#/components/schemas/Lease"}
                  links:
                    PutWatermarkWithLease: {$ref: "#/components/links/PutWatermarkWithLease"}
                    ReleaseLease: {$ref: "#/components/links/ReleaseLease"}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "403": {$ref: "#/components/responses/Forbidden"}  # when: read-token
                "409": {$ref: "#/components/responses/Conflict"}
                "413": {$ref: "#/components/responses/PayloadTooLarge"}
                "415": {$ref: "#/components/responses/UnsupportedMediaType"}
                "503": {$ref: "#/components/responses/Unavailable"}
            delete:
              operationId: releaseLease
              tags: [leases]
              summary: Release the lease (send its Lease-Token); no-op when none is live
              parameters:
                - $ref: "#/components/parameters/LeaseToken"
              responses:
                "204": {description: Released}
                "400": {$ref: "#/components/responses/BadRequest"}
                "401": {$ref: "#/components/responses/Unauthorized"}  # when: auth
                "403": {$ref: "#/components/responses/Forbidden"}  # when: read-token
                "409": {$ref: "#/components/responses/Conflict"}
                "503": {$ref: "#/components/responses/Unavailable"}
        components:
          securitySchemes:
            bearer:
              type: http
              scheme: bearer
              description: STORAGE_API_TOKEN, needed on /status and /api/v1/*  # when: api-token-only
              description: >-  # when: read-token
                STORAGE_API_TOKEN (anything) or STORAGE_READ_TOKEN (GET and HEAD only; else 403) on /status  # when: read-token
                and /api/v1/*  # when: read-token
              description: Not required; this service runs without STORAGE_API_TOKEN  # when: no-auth
          parameters:
            SourceID:
              name: source_id
              in: path
              required: true
              schema: {$ref: "#/components/schemas/SourceID"}
            IfMatch:
              name: If-Match
              in: header
              description: >-
                The ETag of the version the write expects ("3", or the bare 3), or '*' (it must exist); else 412.
                With If-None-Match: * as well, 412 (both cannot hold).
              schema: {type: string, pattern: '^("[0-9]{1,18}"|[0-9]{1,18}|\*)$'}
            LeaseToken:
              name: Lease-Token
              in: header
              description: >-
                The fencing_token of the live lease, in decimal without sign or leading zeros; needed on writes
                while a lease is live
              schema: {type: string, pattern: "^[1-9][0-9]{0,17}$"}
          links:
            GetWatermark:
              operationId: getWatermark
              parameters: {source_id: "$response.body#/source_id"}
            GetWatermarkHistory:
              operationId: getWatermarkHistory
              parameters: {source_id: "$response.body#/source_id"}
            PutWatermarkIfMatch:
              operationId: putWatermark
              description: The next update of the same source, expecting the version just written
              parameters: {source_id: "$response.body#/source_id", header.If-Match: "$response.header.ETag"}
            DeleteWatermarkIfMatch:
              operationId: deleteWatermark
              parameters: {source_id: "$response.body#/source_id", header.If-Match: "$response.header.ETag"}
            AcquireLease:
              operationId: acquireLease
              parameters: {source_id: "$response.body#/source_id"}
            PutWatermarkWithLease:
              operationId: putWatermark
              description: An update of the leased source, fenced by the lease's token
              parameters: {source_id: "$response.body#/source_id", header.Lease-Token: "{$response.body#/fencing_token}"}
            ReleaseLease:
              operationId: releaseLease
              parameters: {source_id: "$response.body#/source_id", header.Lease-Token: "{$response.body#/fencing_token}"}
          headers:
            ETag:
              description: The watermark's version in quotes, like "3"
              required: true
              schema: {type: string, pattern: '^"[0-9]+"$'}
            IdempotentReplayed:
              description: "'true' when the answer is the replay of an earlier request with the same Idempotency-Key"
              schema: {type: string, enum: ["true"]}
          responses:
            BadRequest:
              description: Malformed input (invalid_source_id, invalid_json, invalid_body, invalid_timestamp, invalid_status, missing_timestamp, timestamp_in_future, invalid_parameter, invalid_header, incomplete_request)
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            Unauthorized:
              description: Missing or wrong bearer token
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            Forbidden:
              description: The read-only token cannot change data
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            NotFound:
              description: No watermark for this source (watermark_not_found)
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            Conflict:
              description: watermark_regression, lease_held (with holder and expires_at), lease_required, stale_lease, idempotency_key_reused
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            PreconditionFailed:
              description: If-Match or If-None-Match does not hold (precondition_failed)
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            PayloadTooLarge:
              description: The body is over 64 KiB (payload_too_large)
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            UnsupportedMediaType:
              description: The body is not JSON (unsupported_media_type)
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
            Unavailable:
              description: The database cannot be used (database_unavailable)
              content:
                application/json:
                  schema: {$ref: "#/components/schemas/Error"}
          schemas:
            SourceID:
              type: string
              minLength: 1
              maxLength: 128
              pattern: "^[A-Za-z0-9._:-]+$"
              not: {enum: [".", ".."]}
            Timestamp:
              type: string
              format: date-time
              # Stricter than date-time where the service is: no leap second (:60), at most 9 fraction digits.
              pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$'
              description: >-
                RFC 3339 with an offset, without leap seconds, to the nanosecond at most; once converted to UTC it
                must fall in the years 0000 to 9999 (else 400 invalid_timestamp). Answered in UTC with Z, fractions
                exact to the nanosecond.
            RunStatus:
              type: string
              enum: [success, failed]
            BooleanFlag:
              type: string
              pattern: "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)?$"
            Watermark:
              type: object
              required: [source_id, last_successful_timestamp, last_run_timestamp, status, records_collected,
                error_message, version, consecutive_failures, created_at]
              additionalProperties: false
              properties:
                source_id: {$ref: "#/components/schemas/SourceID"}
                last_successful_timestamp:
                  oneOf:
                    - {$ref: "#/components/schemas/Timestamp"}
                    - {type: "null"}
                last_run_timestamp: {$ref: "#/components/schemas/Timestamp"}
                status: {$ref: "#/components/schemas/RunStatus"}
                records_collected: {type: integer, minimum: 0}
                error_message: {type: [string, "null"]}
                version: {type: integer, minimum: 1}
                consecutive_failures: {type: integer, minimum: 0}
                created_at: {$ref: "#/components/schemas/Timestamp"}
            WatermarkUpdate:
              type: object
              required: [status]
              description: >-
                A success needs a timestamp (400 missing_timestamp) no further ahead of the server's clock than
                FUTURE_TOLERANCE_SECONDS (400 timestamp_in_future: a rule of the clock, which no schema can
                state); a failed run may leave it out or null. Unknown fields are ignored.
              oneOf:
                - properties:
                    status: {const: success}
                    timestamp: {$ref: "#/components/schemas/Timestamp"}
                  required: [status, timestamp]
                - properties:
                    status: {const: failed}
                    timestamp:
                      oneOf:
                        - {$ref: "#/components/schemas/Timestamp"}
                        - {type: "null"}
              properties:
                timestamp:
                  oneOf:
                    - {$ref: "#/components/schemas/Timestamp"}
                    - {type: "null"}
                status: {$ref: "#/components/schemas/RunStatus"}
                error_message:
                  type: [string, "null"]
                  maxLength: 16384
                records_collected:
                  type: [integer, "null"]
                  minimum: 0
                  maximum: 9223372036854775807
            WatermarkPage:
              type: object
              required: [watermarks, next_cursor]
              additionalProperties: false
              properties:
                watermarks:
                  type: array
                  items: {$ref: "#/components/schemas/Watermark"}
                next_cursor: {type: [string, "null"]}
            WatermarkRun:
              type: object
              required: [version, recorded_at, status, timestamp, last_successful_timestamp, records_collected,
                error_message]
              additionalProperties: false
              properties:
                version: {type: integer, minimum: 1}
                recorded_at: {$ref: "#/components/schemas/Timestamp"}
                status: {$ref: "#/components/schemas/RunStatus"}
                timestamp:
                  oneOf:
                    - {$ref: "#/components/schemas/Timestamp"}
                    - {type: "null"}
                last_successful_timestamp:
                  oneOf:
                    - {$ref: "#/components/schemas/Timestamp"}
                    - {type: "null"}
                records_collected: {type: integer, minimum: 0}
                error_message: {type: [string, "null"]}
            History:
              type: object
              required: [source_id, runs]
              additionalProperties: false
              properties:
                source_id: {$ref: "#/components/schemas/SourceID"}
                runs:
                  type: array
                  items: {$ref: "#/components/schemas/WatermarkRun"}
            LeaseRequest:
              type: object
              required: [owner]
              description: Unknown fields are ignored
              properties:
                owner:
                  type: string
                  minLength: 1
                  maxLength: 256
                  pattern: "^[^\\x00-\\x1F\\x7F]+$"
                  description: The collector instance; 1 to 256 printable characters (code points)
                ttl_seconds:
                  type: [integer, "null"]
                  minimum: 1
                  maximum: 86400
                  default: 300
                  description: Lease length; absent or null means 300
            Lease:
              type: object
              required: [source_id, owner, fencing_token, expires_at]
              additionalProperties: false
              properties:
                source_id: {$ref: "#/components/schemas/SourceID"}
                owner: {type: string}
                fencing_token: {type: integer, minimum: 1}
                expires_at: {$ref: "#/components/schemas/Timestamp"}
            Health:
              type: object
              required: [status]
              additionalProperties: false
              properties:
                status: {type: string, enum: [healthy, unhealthy]}
                error: {type: string}
            Status:
              type: object
              required: [service, version, environment, uptime_seconds, database, watermarks]
              additionalProperties: false
              properties:
                service: {type: string}
                version: {type: string}
                environment: {type: string, enum: [development, production]}
                uptime_seconds: {type: integer, minimum: 0}
                database:
                  type: object
                  required: [path, size_bytes, journal_mode]
                  additionalProperties: false
                  properties:
                    path: {type: string}
                    size_bytes: {type: integer, minimum: 0}
                    journal_mode: {type: string}
                watermarks:
                  type: object
                  required: [total, failed, stale]
                  additionalProperties: false
                  properties:
                    total: {type: integer, minimum: 0}
                    failed: {type: integer, minimum: 0}
                    stale: {type: integer, minimum: 0}
            Error:
              type: object
              required: [error]
              additionalProperties: false
              properties:
                error:
                  type: object
                  required: [code, message]
                  additionalProperties: false
                  properties:
                    code: {type: string, pattern: "^[a-z][a-z0-9_]*$"}
                    message: {type: string}
                    holder: {type: [string, "null"], description: "lease_held: who holds the lease"}
                    expires_at:
                      description: "lease_held: when the held lease expires"
                      oneOf:
                        - {$ref: "#/components/schemas/Timestamp"}
                        - {type: "null"}
        """#
}
