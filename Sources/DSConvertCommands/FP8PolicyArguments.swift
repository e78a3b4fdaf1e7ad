import CLI
import DeepSeekModel

/// `--fp8-absorbed` and `--skip`, as `quantize` and `convert` take them.
enum FP8PolicyArguments {
    /// The policy the arguments ask for; a `--skip` that is not a regular expression is a usage error.
    static func policy(_ arguments: ParsedArguments) throws -> FP8Policy {
        do {
            return try FP8Policy(quantizeAbsorbed: arguments.flag("fp8-absorbed"), skipPatterns: arguments.all("skip"))
        } catch let invalid as InvalidSkipPattern {
            throw UsageError("--skip '\(invalid.pattern)' is not a valid regular expression")
        }
    }
}
