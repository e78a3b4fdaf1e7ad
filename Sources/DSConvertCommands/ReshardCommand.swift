import CLI
import Conversion
import Foundation
import SafeTensors

/// `dsconvert reshard`: rewrites a checkpoint's shards at another size, tensors unchanged.
public enum ReshardCommand: Command {
    public static let spec = CommandSpec(
        name: "reshard",
        abstract: "Rewrite a checkpoint into shards of at most --max-shard-size, tensors byte for byte unchanged.",
        options: [
            OptionSpec("input", path: "DIR", help: "Input checkpoint directory."),
            CheckpointOutputOptions.output,
            CheckpointOutputOptions.maxShardSize,
            CheckpointOutputOptions.force,
            CheckpointOutputOptions.resume,
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let input = URL(fileURLWithPath: try arguments.required("input"))
        let output = URL(fileURLWithPath: try arguments.required("output"))
        let summary = try ReshardStage.run(input: input, output: output, shardSize: try ConversionOutputSize.parse(arguments),
                                           force: arguments.flag("force"), resume: arguments.flag("resume")) { terminal.progress($0) }
        terminal.endProgress()
        terminal.out("\(output.path): \(summary.tensors) tensors in \(summary.files) file(s)")
        return ExitCode.success
    }
}
