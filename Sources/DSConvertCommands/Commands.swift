import CLI
import SafeTensors

/// Every `dsconvert` subcommand, in the order `--help` lists them.
public enum DSConvertCommands {
    public static let all: [Command.Type] = [InspectCommand.self, AbsorbCommand.self, QuantizeCommand.self, ShardCommand.self, ConvertCommand.self, ReshardCommand.self, ForwardCommand.self, ValidateCommand.self, TokenizeCommand.self, ExportCommand.self]
    public static let abstract = "Convert DeepSeek checkpoints (V2, V3, R1, V3.1, Kimi-K2, Moonlight) for deployment and measure the drift."
}

/// The executables' entry points: library notes (a work directory left alone, a resume that starts
/// over) go through the same terminal as the command's own diagnostics, and the exit status is
/// returned only once no write is still running in the background (`BackgroundWrites`: exiting
/// under a hashing thread crashed it).
public enum Entry {
    public static func front(tool: String, abstract: String, commands: [Command.Type]) -> Int32 {
        Diagnostics.install { Terminal.shared.note($0) }
        defer { BackgroundWrites.waitForAll() }
        return CommandLineTool.runFront(tool: tool, abstract: abstract, commands: commands, arguments: Array(CommandLine.arguments.dropFirst()))
    }

    public static func single(_ command: Command.Type, invocation: String) -> Int32 {
        Diagnostics.install { Terminal.shared.note($0) }
        defer { BackgroundWrites.waitForAll() }
        return CommandLineTool.runSingle(command, invocation: invocation, arguments: Array(CommandLine.arguments.dropFirst()))
    }
}
