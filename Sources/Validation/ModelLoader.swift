import DeepSeekModel
import Foundation
import SafeTensors

/// Opens a checkpoint directory for the forward pass, after checking it against its config.
public enum ModelLoader {
    public static func open(_ directory: URL) throws -> Validator.Model {
        let config = try DeepSeekV2Config.load(directory: directory)
        let checkpoint = try Checkpoint(directory: directory)
        let report = CheckpointChecker.check(config: config, checkpoint: checkpoint)
        if let first = report.problems.first { throw first }
        return Validator.Model(label: directory.path, config: config, weights: CheckpointWeights(checkpoint: checkpoint, fp8Block: config.quantization?.block))
    }
}
