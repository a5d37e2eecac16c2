import Hummingbird; import AsyncHTTPClient; import Prometheus; import ServiceLifecycle; import ArgumentParser
@main struct M { static func main() {} }
