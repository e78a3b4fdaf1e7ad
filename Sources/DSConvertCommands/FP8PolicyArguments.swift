import CLI
import Conversion
import DeepSeekModel
import Tokenizer

/// `--fp8-absorbed` and `--skip`, as `quantize` and `convert` take them.
enum FP8PolicyArguments {
    /// The policy the arguments ask for; a `--skip` the matcher cannot read is a usage error.
    static func policy(_ arguments: ParsedArguments) throws -> FP8Policy {
        let patterns = try arguments.all("skip").map { pattern in
            do { return try NamePattern(pattern) } catch let refusal as NamePattern.Refusal {
                throw UsageError("--skip '\(pattern)' is not a regular expression dsconvert reads (\(refusal.reason))")
            }
        }
        return FP8Policy(quantizeAbsorbed: arguments.flag("fp8-absorbed"), skip: patterns)
    }
}
