// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.os;

import java.util.Set;

public class BaseBundle {
    BaseBundle() { throw new RuntimeException("Stub!"); }
    public Set<String> keySet() { throw new RuntimeException("Stub!"); }
    @Deprecated public Object get(String key) { throw new RuntimeException("Stub!"); }
    public String getString(String key) { throw new RuntimeException("Stub!"); }
}
