import CLI
import Conversion
import Foundation

/// The options of every command that writes a checkpoint directory (an option group): declared once,
/// so their names and help read the same in each command's `--help`.
enum CheckpointOutputOptions {
    static let output = OptionSpec("output", path: "DIR", help: "Output directory (created atomically).")
    static let maxShardSize = OptionSpec("max-shard-size", value: "SIZE", help: ConversionOutputSize.help)
    static let force = OptionSpec("force", help: "Replace an existing output: only a previous dsconvert output (it has dsconvert.json) or an empty directory.")
    static let resume = OptionSpec("resume", help: "Continue an interrupted run into the same output, keeping its verified shards.")
}

/// `--max-shard-size` shared by the stages: a limit, or by default the input's own layout.
enum ConversionOutputSize {
    static let help = "Largest output shard: 5GB, 500MB, 2GiB or bytes (default: the input's largest shard file; an output that would be one file over 1 GB from a several-file input keeps the input's file count)."

    static func parse(_ arguments: ParsedArguments) throws -> ShardSize {
        try bytes(arguments, "max-shard-size").map(ShardSize.limit) ?? .likeInput
    }

    /// A size option's bytes (nil when absent); a value that is not a size is a usage error naming the option.
    static func bytes(_ arguments: ParsedArguments, _ option: String) throws -> Int? {
        guard let text = arguments.value(option) else { return nil }
        do { return try ConversionOutput.parseSize(text) } catch {
            throw UsageError("--\(option): \((error as? LocalizedError)?.errorDescription ?? "\(error)")")
        }
    }
}
