import CLI
import DSConvertCommands
import Foundation

exit(Entry.single(ShardCommand.self, invocation: "dsconvert-shard"))
