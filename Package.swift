// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "watermark-platform",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "storage-service", targets: ["StorageService"]),
        .executable(name: "collection-service", targets: ["CollectionService"]),
        .executable(name: "watermarkctl", targets: ["WatermarkCtl"]),
        .executable(name: "bench-hello", targets: ["BenchHello"]),
        .library(name: "WatermarkCore", targets: ["WatermarkCore"]),
        .library(name: "StorageClient", targets: ["StorageClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        // The configuration reader of both services and the client factory; no file formats needed (no traits).
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0", traits: []),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        // Already in the graph through Hummingbird; named because the request timeout handler and
        // the JSON answer to unparsable requests see its types.
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        // Already in the graph through async-http-client and HummingbirdTLS; named for TLS files and trust roots.
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // The PostgreSQL store (DATABASE_URL): the pool and the wire protocol; its graph (NIO, SSL, log,
        // service-lifecycle) is already ours.
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        // Tests only: OpenAPITests read the document with a real YAML parser.
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        // The collection service's web view: a logic-less template rather than HTML built in code.
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    ],
    targets: [
        .target(
            name: "WatermarkCore",
            path: "Shared/WatermarkCore",
            swiftSettings: swiftSettings
        ),
        // The server side of the model: the store protocol and the in-memory store (which the mock client runs too).
        .target(
            name: "WatermarkStores",
            dependencies: ["WatermarkCore"],
            path: "Shared/WatermarkStores",
            swiftSettings: swiftSettings
        ),
        // What both services and the client library share beyond the model: TLS files, the health probe.
        .target(
            name: "ServiceSupport",
            dependencies: [
                "WatermarkCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Shared/ServiceSupport",
            swiftSettings: swiftSettings
        ),
        // PostgreSQL for both services: the URL setting, migrations, the database as a service, deadlines.
        .target(
            name: "PostgresSupport",
            dependencies: [
                "WatermarkCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/PostgresSupport",
            swiftSettings: swiftSettings
        ),
        // What both services' HTTP servers share on Hummingbird (kept out of ServiceSupport, which the client library
        // links: it needs no HTTP server).
        .target(
            name: "HTTPServerSupport",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Shared/HTTPServerSupport",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "StorageClient",
            dependencies: [
                "WatermarkCore",
                "WatermarkStores",
                "ServiceSupport",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            path: "Shared/StorageClient",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "StorageService",
            dependencies: [
                "PostgresSupport",
                "WatermarkCore",
                "WatermarkStores",
                "ServiceSupport",
                "HTTPServerSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C interface (GRDB's own module of it), for the statements of every write (`SQLiteCall`).
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Services/Storage",
            // The OpenAPI document, compiled into the binary as bytes (PackageResources.openapi_yaml).
            resources: [.embedInCode("Resources/openapi.yaml")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "CollectionService",
            dependencies: [
                "PostgresSupport",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                "WatermarkCore",
                "StorageClient",
                "ServiceSupport",
                "HTTPServerSupport",
                // The sink's dedup index; already built for the storage service.
                .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C interface (GRDB's own module of it), for the index's per-record insert loop.
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // SIGTERM in `--once` mode, which runs without a service group (a module of the package above).
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Services/Collection",
            // The web view's template, compiled into the binary as bytes (PackageResources.dashboard_mustache).
            resources: [.embedInCode("Resources/dashboard.mustache")],
            swiftSettings: swiftSettings
        ),
        // The operators' command line, on the shared client library.
        .executableTarget(
            name: "WatermarkCtl",
            dependencies: [
                "WatermarkCore",
                "StorageClient",
                "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Services/Ctl",
            swiftSettings: swiftSettings
        ),
        // `make bench`'s baseline: a Hummingbird hello world built from the same graph, not a route of the service.
        .executableTarget(
            name: "BenchHello",
            dependencies: [.product(name: "Hummingbird", package: "hummingbird")],
            path: "bench/Hello",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "WatermarkCore",
                "PostgresSupport",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "WatermarkCoreTests",
            dependencies: ["WatermarkCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StorageServiceTests",
            dependencies: [
                "HTTPServerSupport",
                "PostgresSupport",
                "TestSupport",
                "ServiceSupport",
                "StorageClient",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                "WatermarkStores",
                .product(name: "Yams", package: "Yams"),
                "StorageService",
                "WatermarkCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StorageClientTests",
            dependencies: [
                "TestSupport",
                "ServiceSupport",
                "WatermarkStores",
                "StorageClient",
                "WatermarkCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CollectionServiceTests",
            dependencies: [
                "PostgresSupport",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                "TestSupport",
                "ServiceSupport",
                "CollectionService",
                "StorageClient",
                "WatermarkCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "TestSupport",
                "StorageClient",
                "WatermarkCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
