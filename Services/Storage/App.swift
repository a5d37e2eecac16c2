import Hummingbird; import GRDB; import Prometheus; import ServiceLifecycle; import ArgumentParser
@main struct M { static func main() {} }
