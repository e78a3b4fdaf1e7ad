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
            OptionSpec("input", value: "DIR", help: "Input checkpoint directory."),
            OptionSpec("output", value: "DIR", help: "Output directory (created atomically)."),
            OptionSpec("max-shard-size", value: "SIZE", help: ConversionOutputSize.help),
            OptionSpec("force", help: "Replace an existing output: only a previous dsconvert output (it has dsconvert.json) or an empty directory."),
            OptionSpec("resume", help: "Continue an interrupted run into the same output, keeping its verified shards."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let input = URL(fileURLWithPath: try arguments.required("input"))
        let output = URL(fileURLWithPath: try arguments.required("output"))
        let shardSize = try ConversionOutputSize.parse(arguments.value("max-shard-size"))
        let checkpoint = try Checkpoint(directory: input)
        let planned = checkpoint.tensors.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
        let maxShardSize = shardSize.resolve(input: input, tensors: planned)
        let layout = CheckpointLayout(tensors: planned, maxShardSize: maxShardSize)
        let out = try ConversionOutput(input: input, output: output, force: arguments.flag("force"), layout: layout,
                                       stage: .init(stage: "reshard", options: ["max_shard_size": String(maxShardSize)], input: input.path),
                                       resume: arguments.flag("resume"))
        let total = checkpoint.tensors.count
        for (i, info) in checkpoint.tensors.enumerated() where !out.writer.isWritten(info.name) {
            try out.writer.write(info.name, view: try checkpoint.view(info.name))
            checkpoint.release(info.name)
            if i % 64 == 0 || i == total - 1 { terminal.progress("reshard: \(i + 1)/\(total) tensors") }
        }
        terminal.endProgress()
        try out.copySideFiles()
        try out.commit()
        terminal.out("\(output.path): \(total) tensors in \(layout.shards.count) file(s)")
        return ExitCode.success
    }
}
