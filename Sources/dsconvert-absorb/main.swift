import CLI
import DSConvertCommands
import Foundation

exit(Entry.single(AbsorbCommand.self, invocation: "dsconvert-absorb"))
