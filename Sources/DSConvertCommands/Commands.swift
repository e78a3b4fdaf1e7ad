import CLI

/// Every `dsconvert` subcommand, in the order `--help` lists them.
public enum DSConvertCommands {
    public static let all: [Command.Type] = [InspectCommand.self, AbsorbCommand.self, QuantizeCommand.self, ShardCommand.self, ConvertCommand.self, ReshardCommand.self, ForwardCommand.self, ValidateCommand.self]
    public static let abstract = "Convert DeepSeek-V2-family checkpoints for deployment and measure the drift."
}
