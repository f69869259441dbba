// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

import android.content.Context;
import java.util.List;

public class ArrayAdapter<T> extends BaseAdapter {
    public ArrayAdapter(Context context, int resource, List<T> objects) { throw new RuntimeException("Stub!"); }
    @Override public int getCount() { throw new RuntimeException("Stub!"); }
    @Override public T getItem(int position) { throw new RuntimeException("Stub!"); }
}
