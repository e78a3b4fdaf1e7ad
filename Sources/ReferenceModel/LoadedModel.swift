import DeepSeekModel
import Numerics

/// A model to run: its config and where its weights come from.
public struct LoadedModel {
    public let label: String
    public let config: DeepSeekConfig
    public let weights: WeightProvider
    /// Set for a sharded output: the forward runs its MoE layers as expert parallelism.
    public let placement: ExpertPlacement?
    /// The cache the forward pass runs through: the checkpoint's declared format unless overridden.
    public var kvCache: KVCacheSetting?

    /// - Throws: when `config.json` declares a KV cache that is not valid for this model.
    public init(label: String, config: DeepSeekConfig, weights: WeightProvider, placement: ExpertPlacement? = nil) throws {
        self.label = label
        self.config = config
        self.weights = weights
        self.placement = placement
        kvCache = try config.kvCache.map { _ in try KVCacheSetting(declaredBy: config, path: label) }
    }

    public func forward() -> ReferenceForward { ReferenceForward(config: config, weights: weights, placement: placement, kvCache: kvCache) }
}
